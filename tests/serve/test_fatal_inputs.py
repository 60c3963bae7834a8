"""Requests that used to stop or freeze a real server (issue 28), sent to real servers: the
transformers engine, the in-process vLLM engine, and the gateway over stock vLLM with the plugin
(whose upstream is also attacked directly). After each attack a normal request still works and
`/health` tells the truth. One server start per engine; at the end the module prints how many
requests got a 5xx (must be 0) and the server's peak RSS (must stay under 2 GiB).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import API_KEY, SERVERS, RemoteServer, StockVLLM

UPSTREAM_KEY = "upstream-test-key"
STALL = 3  # --stream-stall-seconds
MAX_PEAK = 2 << 30
ARGS = ["--max-tokens-limit", "1024", "--stream-stall-seconds", str(STALL), "--feedback-per-minute", "20"]
CHAT = {"model": "chatrec", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4,
        "chatrec": {"mode": "model"}}


class Recorder:
    """Every status a test saw, so the module can report its 5xx count."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def post(self, url: str, body: object, headers: dict[str, str], timeout: float = 120) -> httpx.Response:
        r = httpx.post(url, json=body, headers=headers, timeout=timeout)
        self.statuses.append(r.status_code)
        return r


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module", params=SERVERS)
def srv(request: pytest.FixtureRequest, serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[RemoteServer]:
    engine = request.param
    if engine != "transformers":
        pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp(f"fatal-{engine}")
    bundle = root / "bundle"
    shutil.copytree(serve_bundle, bundle)
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    (keys / "client").write_text(API_KEY + "\n")
    (keys / "upstream").write_text(UPSTREAM_KEY + "\n")
    args = [*ARGS, "--api-key-file", str(keys / "client")]  # keys by file: nothing secret in argv
    upstream = None
    if engine == "upstream":
        upstream = StockVLLM(bundle / "model", root / "vllm.log", api_key=UPSTREAM_KEY)
        args += ["--upstream", upstream.url, "--upstream-api-key-file", str(keys / "upstream")]
    elif engine == "vllm":
        args += ["--kv-cache-gib", "0.25"]
    server = RemoteServer(bundle, "remote" if upstream else engine, *args, api_key=None)
    server.api_key = API_KEY
    server.bundle = bundle  # type: ignore[attr-defined]
    server.upstream = upstream  # type: ignore[attr-defined]
    server.rec = Recorder()  # type: ignore[attr-defined]
    still_serves(server)
    yield server
    pids = {"server": server.proc.pid, **({"upstream": upstream.proc.pid} if upstream and upstream.proc else {})}
    peaks = {name: peak_rss(pid) for name, pid in pids.items()}
    alive = server.proc.poll() is None
    server.stop()
    if upstream is not None:
        upstream.stop()
    statuses = server.rec.statuses  # type: ignore[attr-defined]
    fives = [s for s in statuses if s >= 500]
    print(f"\n{engine}: {len(statuses)} attack and check requests, {len(fives)} 5xx; peak RSS "
          + ", ".join(f"{n} {p / 2**30:.2f} GiB" for n, p in peaks.items()))
    assert alive, "the server died during the attacks"
    assert all(p < MAX_PEAK for p in peaks.values()), peaks


def post(srv: RemoteServer, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return srv.rec.post(srv.url + path, body, srv.headers() if headers is None else headers)  # type: ignore[attr-defined]


def still_serves(srv: RemoteServer) -> None:
    """A normal recommendation and a normal chat answer, and /health says ok."""
    r = post(srv, "/v1/recommendations", {"history": [{"item_id": "m1", "action": "like"}], "k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
    r = post(srv, "/v1/chat/completions", CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant", r.text
    health = httpx.get(srv.url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    if getattr(srv, "upstream", None) is not None:
        assert health.json()["upstream"] == "ok", health.text


def error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(body)
    return body


# 2. a seed outside int64 stopped the in-process vLLM engine for good -------------------------------
def test_out_of_range_seed_is_400_and_the_edges_work(srv: RemoteServer) -> None:
    for seed in (18446744073709551616, 2**63, -(2**63) - 1):
        body = error(post(srv, "/v1/chat/completions", {**CHAT, "temperature": 1, "seed": seed}), 400)
        assert body["param"] == "seed"
    for seed in (2**63 - 1, -(2**63), 0):  # the whole int64 range seeds a generator
        r = post(srv, "/v1/chat/completions", {**CHAT, "temperature": 1, "seed": seed})
        assert r.status_code == 200, r.text
    still_serves(srv)


# 1. an unregistered constraint core ended the stock vLLM upstream -----------------------------------
def test_in_process_keys_and_bad_filters_stop_nothing(srv: RemoteServer) -> None:
    for args in ({"core": "x"}, {"mask": "x"}, {"exclude": "m1"}):
        error(post(srv, "/v1/chat/completions", {**CHAT, "vllm_xargs": {"chatrec": args}}), 400)
    upstream: StockVLLM | None = getattr(srv, "upstream", None)
    if upstream is not None:  # the upstream itself, reached without the gateway
        url, key = upstream.url + "/v1/completions", {"Authorization": f"Bearer {UPSTREAM_KEY}"}
        plain = {"model": str(upstream.model_dir), "prompt": "hi", "max_tokens": 1}
        assert srv.rec.post(url, plain, {}).status_code == 401  # type: ignore[attr-defined]
        for xargs in ({"chatrec": '{"core":"x"}'}, {"chatrec": '{"mask":"x"}'}, {"chatrec": '{"core":"x","mask":"y"}'},
                      {"chatrec": "{not json"}, {"chatrec": '["core"]'}, {"chatrec": 1, "chatrec_exclude": "m1"}):
            r = srv.rec.post(url, {**plain, "vllm_xargs": xargs}, key)  # type: ignore[attr-defined]
            assert r.status_code == 400, (xargs, r.text)
        # filters the processor cannot satisfy: the request names no item, the engine lives
        for xargs in ({"chatrec": 1, "chatrec_categories": ["NoSuchGenre"]},
                      {"chatrec": 1, "chatrec_exclude": [f"m{i}" for i in range(40)]}):
            r = srv.rec.post(url, {**plain, "max_tokens": 3, "vllm_xargs": xargs}, key)  # type: ignore[attr-defined]
            assert r.status_code == 200, (xargs, r.text)
        assert srv.rec.post(url, plain, key).status_code == 200  # type: ignore[attr-defined]
    still_serves(srv)


# 3. a client that stops reading a stream froze the transformers engine -----------------------------
def _stalled_stream(srv: RemoteServer) -> socket.socket:
    """A streamed chat of up to 1,024 tokens whose client reads the first event, then nothing."""
    body = json.dumps({**CHAT, "max_tokens": 1024, "ignore_eos": True, "temperature": 1, "seed": 3,
                       "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.connect(("127.0.0.1", srv.port))
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {srv.api_key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body)
    sock.settimeout(60)
    got = b""
    while b"data: " not in got:
        chunk = sock.recv(1024)
        assert chunk, got
        got += chunk
    assert b" 200 OK" in got.split(b"\r\n", 1)[0], got[:200]
    return sock


def test_a_stalled_stream_blocks_no_one(srv: RemoteServer) -> None:
    sock = _stalled_stream(srv)
    try:
        time.sleep(1.0)  # the stream is running (or stuck on a full socket buffer)
        t0 = time.monotonic()
        r = post(srv, "/v1/recommendations", {"history": [{"item_id": "m2", "action": "like"}], "k": 3})
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 10, "a recommendation waited on the stalled stream"
        r = post(srv, "/v1/chat/completions", CHAT)
        assert r.status_code == 200, r.text
    finally:
        sock.close()
    still_serves(srv)


def test_a_suspended_generation_holds_no_engine_lock(serve_bundle: Path) -> None:
    """What a stalled reader leaves behind in the transformers engine: a generator suspended at a
    `yield`. Scoring and a second generation must run meanwhile (the engine lock was held across
    the yield: every other request then waited for the client)."""
    import threading

    from chatrec.engine import GenerationParams
    from chatrec.recommender import Recommender

    rec = Recommender.from_bundle(serve_bundle, engine="transformers")
    try:
        engine = rec.engine
        prompt = rec.retrieval_prompt([("m1", "like")], None)
        params = GenerationParams(max_tokens=64, temperature=1.0, seed=1, constrained=True, ignore_eos=True)
        stalled = engine.generate(prompt, params)
        first = next(stalled)  # ... and the client reads no further
        done: dict[str, object] = {}

        def others() -> None:
            done["scores"] = engine.next_token_logprobs(prompt, [[]], [first.token_id])
            done["other"] = [s.token_id for s in engine.generate(prompt, GenerationParams(max_tokens=5, seed=2))]

        worker = threading.Thread(target=others, daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "scoring or a second generation waited on the suspended one"
        rest = [s.token_id for s in stalled]  # the suspended generation resumes on its own cache
        assert len(rest) == 63 and len(done["other"]) == 5  # type: ignore[arg-type]
        again = [s.token_id for s in engine.generate(prompt, params)]
        assert again == [first.token_id, *rest]  # same seed, same tokens: no cache was shared mid-way
    finally:
        rec.close()


def test_a_stalled_send_ends_the_stream_and_closes_its_generation() -> None:
    """`StallGuardedStream` over a send that never completes (a client whose socket buffer is full):
    the response ends after `stall_seconds` and the body's generator is closed (which releases the
    engine and the upstream connection), instead of waiting for the client forever."""
    import asyncio

    from serve.app import StallGuardedStream

    closed = []

    async def body():  # type: ignore[no-untyped-def]
        try:
            for i in range(1000):
                yield f"data: {i}\n\n"
        finally:
            closed.append(True)

    sent = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)
        if len(sent) > 3:
            await asyncio.Event().wait()  # blocks: the client reads no more

    async def receive():  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()

    response = StallGuardedStream(body(), stall_seconds=0.5, media_type="text/event-stream")
    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send), 10))
    assert time.monotonic() - t0 < 5 and closed == [True] and len(sent) == 4


# 5. the feedback rate limit was keyed on the raw Authorization header -----------------------------
def test_feedback_rate_limit_is_per_client_not_per_header_spelling(srv: RemoteServer) -> None:
    event = {"user_id": "u1", "item_id": "m1", "action": "like"}
    spellings = ["Bearer", "bearer", "BEARER", "bEARER", "BeArEr", "bEaReR", "BEARer", "beaRER"]
    statuses = [post(srv, "/v1/feedback", event, {"Authorization": f"{spellings[i % 8]} {API_KEY}"}).status_code
                for i in range(26)]
    assert statuses[0] == 200 and 429 in statuses, statuses  # 20 a minute per client, however it spells Bearer
    assert set(statuses) <= {200, 429}, statuses
    # a line half-written by a crash is not glued to the next record
    log = srv.bundle / "logs" / "feedback.jsonl"  # type: ignore[attr-defined]
    with log.open("ab") as fh:
        fh.write(b'{"user_id": "u9", "item_id": "m1", "act')
    time.sleep(3.5)  # refill a few tokens
    r = post(srv, "/v1/feedback", {**event, "user_id": "after-crash"})
    assert r.status_code == 200, r.text
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[-1]["user_id"] == "after-crash" and all(r["user_id"] != "u9" for r in rows)
    still_serves(srv)


# 7. a malformed value function was a 500 -----------------------------------------------------------
def test_malformed_value_functions_are_400(srv: RemoteServer) -> None:
    for value in ("1.2.3*like", "like=nan", "like=1e999", "like!!", "2*", "like=1,=2", "--like", "like*like"):
        body = error(post(srv, "/v1/rank", {"candidates": ["m1", "m2"], "value": value}), 400)
        assert body["param"] == "value", (value, body)
    r = post(srv, "/v1/rank", {"candidates": ["m1", "m2"], "value": "like - 10*dislike + 0.5*click"})
    assert r.status_code == 200, r.text
    still_serves(srv)
