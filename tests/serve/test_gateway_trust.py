"""The gateway does not trust its upstream (issue 28, item 6): a real `chatrec serve --upstream` in
front of a scripted upstream that misbehaves the ways a wrong or broken vLLM server can (no
processor loaded, malformed replies, items the request excluded, errors that carry secrets).
Each misbehaviour is a 502 that names neither the upstream's URL nor its credentials; the gateway
refuses to start over an upstream that does not apply the constraint. (The suites over stock vLLM
with the plugin are test_fatal_inputs.py and test_gateway.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatrec.constrained import ConstraintCore
from tests.serve.conftest import RemoteServer, free_port

SECRET = "s3cret-upstream-password"  # in the upstream URL
LEAK = "hunter2"  # in an upstream error message


class ScriptedUpstream:
    """vLLM's `/v1/models` and `/v1/completions` shapes, answering as `mode` says."""

    def __init__(self, core: ConstraintCore):
        self.core, self.mode, self.port = core, "ok", free_port()
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, json.dumps({"data": [{"id": "scripted"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                self._send(*outer.answer(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: dict[str, Any]) -> tuple[int, bytes, str]:
        span, trie = self.core.span, self.core.trie
        if "logit_bias" in body:  # the gateway's probe
            bait = int(next(iter(body["logit_bias"])))
            token = bait if self.mode == "unconstrained" else int(trie.allowed_next([])[0])
            return 200, json.dumps({"choices": [{"index": 0, "logprobs": {"tokens": [f"token_id:{token}"]}}]}).encode(), \
                "application/json"
        if self.mode == "error":
            return 500, json.dumps({"error": {"message": f"internal: db password {LEAK}"}}).encode(), "application/json"
        if not body.get("stream"):  # scoring
            if self.mode == "bad_json":
                return 200, b"<html>not json</html>", "text/html"
            if self.mode == "bad_shape":
                return 200, json.dumps({"choices": [{"index": "first", "logprobs": 3}]}).encode(), "application/json"
            choices = [{"index": i, "logprobs": {"top_logprobs": [{f"token_id:{t}": -1.0 for t in body["logprob_token_ids"]}]}}
                       for i in range(len(body["prompt"]))]
            return 200, json.dumps({"choices": choices}).encode(), "application/json"
        if self.mode == "bad_sse":
            lines = ["data: {not json", "data: [DONE]"]
        else:
            excluded = str(body.get("vllm_xargs", {}).get("chatrec_exclude", ["m1"])[0])
            tokens = {"code_in_text": [int(span.code_ids[0])],
                      "excluded": [span.sid_begin, *map(int, trie.sequences[trie.index_of_id(excluded)]), span.sid_end],
                      }[self.mode]
            lines = [f"data: {json.dumps({'choices': [{'logprobs': {'tokens': [f'token_id:{t}'], 'token_logprobs': [-1.0]}}]})}"
                     for t in tokens] + ["data: [DONE]"]
        return 200, "".join(line + "\n\n" for line in lines).encode(), "text/event-stream"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def upstream(serve_bundle: Path) -> Iterator[ScriptedUpstream]:
    up = ScriptedUpstream(ConstraintCore.from_model_dir(serve_bundle / "model"))
    yield up
    up.stop()


def test_an_upstream_without_the_processor_is_refused_at_start(serve_bundle: Path, upstream: ScriptedUpstream) -> None:
    upstream.mode = "unconstrained"
    try:
        out = subprocess.run([sys.executable, "-m", "chatrec", "serve", "--bundle", str(serve_bundle), "--upstream",
                              f"http://127.0.0.1:{upstream.port}", "--port", str(free_port())],
                             capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1",
                                                                             **__import__("os").environ})
    finally:
        upstream.mode = "ok"
    assert out.returncode != 0
    assert "does not apply the chatrec constraint" in out.stderr and "--logits-processors" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_misbehaving_upstream_replies_are_502_without_secrets(serve_bundle: Path, upstream: ScriptedUpstream,
                                                             tmp_path: Path) -> None:
    url = f"http://gateway:{SECRET}@127.0.0.1:{upstream.port}"
    gateway = RemoteServer(serve_bundle, "remote", "--upstream", url, api_key=None, log=tmp_path / "gateway.log")
    chat = {"model": "chatrec", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
            "chatrec": {"mode": "model", "exclude_item_ids": ["m1"]}}
    rec = {"history": [{"item_id": "m2", "action": "like"}], "k": 3}
    try:
        assert upstream.requests and "logit_bias" in upstream.requests[0]  # probed at start
        for mode, path, body in [("bad_sse", "/v1/chat/completions", chat), ("code_in_text", "/v1/chat/completions", chat),
                                 ("excluded", "/v1/chat/completions", chat), ("error", "/v1/chat/completions", chat),
                                 ("error", "/v1/recommendations", rec), ("bad_json", "/v1/recommendations", rec),
                                 ("bad_shape", "/v1/recommendations", rec)]:
            upstream.mode = mode
            for stream in (False, True) if path.endswith("completions") else (False,):
                r = httpx.post(gateway.url + path, json={**body, "stream": stream} if stream else body, timeout=60)
                text = r.text
                if stream:  # the stream has started when the upstream fails: an in-band error event
                    assert r.status_code == 200 and '"code": "upstream_error"' in text, (mode, text[-600:])
                else:
                    assert r.status_code == 502, (mode, text)
                    assert r.json()["error"]["code"] == "upstream_error", (mode, text)
                assert SECRET not in text and LEAK not in text and str(upstream.port) not in text, (mode, text)
        upstream.mode = "ok"
        health = httpx.get(gateway.url + "/health", timeout=30)
        assert health.status_code == 200 and health.json()["upstream"] == "ok"
        r = httpx.post(gateway.url + "/v1/recommendations", json=rec, timeout=60)
        assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
        upstream.stop()  # gone: still a 502 that names no URL
        r = httpx.post(gateway.url + "/v1/recommendations", json=rec, timeout=60)
        assert r.status_code == 502 and SECRET not in r.text and str(upstream.port) not in r.text, r.text
        assert httpx.get(gateway.url + "/health", timeout=30).json()["upstream"] == "unreachable"
    finally:
        gateway.stop()
    assert SECRET not in (tmp_path / "gateway.log").read_text()  # the server log names the host, not the password
