"""`chatrec serve --upstream` over stock vLLM: an upstream that is down, slow, or comes back; and the
chatrec processor leaves requests that do not opt in untouched (same tokens as without the plugin).

The serve acceptance suite itself runs against the gateway too (`server` fixture, `upstream` param).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import RemoteServer, StockVLLM, free_port

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def bundle(serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("gateway") / "bundle"
    shutil.copytree(serve_bundle, root)
    return root


@pytest.fixture(scope="module")
def plugged(bundle: Path) -> Iterator[StockVLLM]:
    srv = StockVLLM(bundle / "model", bundle.parent / "vllm-plugin.log")
    yield srv
    srv.stop()


def completion(url: str, body: dict) -> list[str]:
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["tokens"]


def test_gateway_scores_equal_the_in_process_engine(bundle: Path, plugged: StockVLLM) -> None:
    """Retrieval through the upstream's API gives the in-process transformers engine's items and
    scores, within float tolerance (both float32 on CPU)."""
    from chatrec.recommender import Recommender

    history = [{"item_id": f"m{i}", "action": "like" if i % 3 else "dislike"} for i in range(20)]
    gateway = RemoteServer(bundle, "remote", "--upstream", plugged.url, api_key=None,
                           log=bundle.parent / "gateway-scores.log")
    try:
        r = httpx.post(gateway.url + "/v1/recommendations", json={"history": history, "k": 5}, timeout=120)
        assert r.status_code == 200, r.text
        got = [(it["item_id"], it["score"]) for it in r.json()["items"]]
    finally:
        gateway.stop()
    rec = Recommender.from_bundle(bundle, engine="transformers")
    try:  # a wide search in process: every item the gateway returned, with its in-process score
        wide = {w.item_id: w.score for w in rec.recommend([(h["item_id"], h["action"]) for h in history], k=15)}
    finally:
        rec.close()
    top = sorted(wide.values(), reverse=True)[:5]
    # the tiny test model ties many items exactly (e.g. log 1/14), so the order among equal
    # scores may differ: compare each item's score, and the score list, not the tie order
    assert max(abs(s - t) for (_, s), t in zip(got, top, strict=True)) < 1e-3, (got, top)
    assert all(abs(wide[i] - s) < 1e-3 for i, s in got), (got, wide)


def test_down_then_back_without_losing_feedback(bundle: Path, plugged: StockVLLM) -> None:
    """Upstream not there: 502 at once, feedback still durable; upstream starts: answers again, and a
    request that does not opt in gets the same tokens with and without the plugin."""
    port = free_port()
    gateway = RemoteServer(bundle, "remote", "--upstream", f"http://127.0.0.1:{port}", "--upstream-timeout", "30",
                           api_key=None, log=bundle.parent / "gateway.log")
    try:
        t0 = time.monotonic()
        r = httpx.post(gateway.url + "/v1/recommendations", json={"history": [{"item_id": "m1"}], "k": 3}, timeout=60)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
        assert time.monotonic() - t0 < 10
        assert httpx.get(gateway.url + "/health").json()["upstream"] == "unreachable"
        for i in range(5):
            ok = httpx.post(gateway.url + "/v1/feedback", json={"user_id": f"u{i}", "item_id": "m3", "action": "like"})
            assert ok.status_code == 200
        plain = StockVLLM(bundle / "model", bundle.parent / "vllm-plain.log", plugin=False, port=port)
        try:
            r = httpx.post(gateway.url + "/v1/recommendations", json={"history": [{"item_id": "m1"}], "k": 3},
                           timeout=120)
            assert r.status_code == 200 and len(r.json()["items"]) == 3
            # scoring needs no processor, generation does: this upstream came back without it
            r = httpx.post(gateway.url + "/v1/chat/completions", timeout=120, json={
                "model": "chatrec", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                "chatrec": {"mode": "model"}})
            assert r.status_code == 502 and "does not apply the chatrec constraint" in r.json()["error"]["message"]
            assert httpx.get(gateway.url + "/health").json()["upstream"] == "unconstrained"
            body = {"model": str(bundle / "model"), "prompt": [1, 9690, 28, 2079], "max_tokens": 12,
                    "temperature": 0, "logprobs": 1, "return_tokens_as_token_ids": True}
            assert completion(plugged.url, body) == completion(plain.url, body)  # not opted in: untouched
            opted = completion(plugged.url, {**body, "vllm_xargs": {"chatrec": 1}})
            codes = {f"token_id:{t}" for t in json.loads((bundle / "model" / "chatrec_tokens.json").read_text())
                     ["codes"].values()}
            assert not codes & set(opted)  # opted in: no code token outside a span
        finally:
            plain.stop()
        rows = (bundle / "logs" / "feedback.jsonl").read_text().splitlines()
        assert sum(1 for r in rows if json.loads(r)["item_id"] == "m3") == 5
    finally:
        gateway.stop()


def test_slow_upstream_is_a_504_within_the_timeout(bundle: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stall() -> None:  # accepts, reads nothing, answers nothing
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept_and_stall, daemon=True).start()
    gateway = RemoteServer(bundle, "remote", "--upstream", f"http://127.0.0.1:{port}", "--upstream-timeout", "2",
                           api_key=None, log=bundle.parent / "gateway-slow.log")
    try:
        t0 = time.monotonic()
        r = httpx.post(gateway.url + "/v1/recommendations", json={"history": [{"item_id": "m1"}], "k": 3}, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - t0 < 10
        chat = httpx.post(gateway.url + "/v1/chat/completions", timeout=60, json={
            "model": "chatrec", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4,
            "chatrec": {"mode": "model"}})
        assert chat.status_code == 504 and set(chat.json()["error"]) == {"message", "type", "param", "code"}
    finally:
        gateway.stop()
        stop.set()
        for s in held:
            s.close()
        listener.close()
