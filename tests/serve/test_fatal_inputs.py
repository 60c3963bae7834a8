"""Requests that used to stop or freeze a real server (issue 28), sent to real servers: the
transformers engine, the in-process vLLM engine, and the gateway over stock vLLM with the plugin
(whose upstream is also attacked directly). After each attack a normal request still works and
`/health` tells the truth. One server start per engine; at the end the module prints how many
requests got a 5xx (must be 0) and the server's peak RSS (must stay under 2 GiB).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.serve.conftest import API_KEY, SERVERS, RemoteServer, StockVLLM
from tests.serve.test_abuse import error  # status and the OpenAI error shape

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


def peak_rss(pid: int) -> list[int]:
    """Peak RSS of `pid` and of each of its descendants (stock vLLM's server runs its engine core in
    a child process)."""
    peaks: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:  # exited meanwhile
            continue
        peaks.append(next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")))
    return peaks


@pytest.fixture(scope="module", params=SERVERS)
def srv(request: pytest.FixtureRequest, serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[RemoteServer]:
    engine = request.param
    if engine != "transformers":
        pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp(f"fatal-{engine}")
    bundle = root / "bundle"
    # CHATREC_ATTACK_BUNDLE: run the same attacks on another bundle (e.g. the default demo's)
    shutil.copytree(os.environ.get("CHATREC_ATTACK_BUNDLE") or serve_bundle, bundle,
                    ignore=shutil.ignore_patterns("train", "checkpoints", "logs", "quarantine", "trained"))
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    (keys / "client").write_text(API_KEY + "\n")
    (keys / "upstream").write_text(UPSTREAM_KEY + "\n")
    args = [*ARGS, "--api-key-file", str(keys / "client")]  # keys by file: nothing secret in argv
    upstream = None
    if engine == "upstream":
        served = bundle / "export" if (bundle / "export").exists() else bundle / "model"  # as `chatrec serve` picks
        upstream = StockVLLM(served, root / "vllm.log", api_key=UPSTREAM_KEY, kv_cache_gib=0.25)
        args += ["--upstream", upstream.url, "--upstream-api-key-file", str(keys / "upstream")]
    elif engine == "vllm":
        args += ["--kv-cache-gib", "0.25"]
    server = RemoteServer(bundle, "remote" if upstream else engine, *args, api_key=None)
    server.api_key = API_KEY
    server.bundle = bundle  # type: ignore[attr-defined]
    server.upstream = upstream  # type: ignore[attr-defined]
    server.rec = Recorder()  # type: ignore[attr-defined]
    server.items = [str(i) for i in pd.read_parquet(bundle / "catalog.parquet", columns=["item_id"])["item_id"]]  # type: ignore[attr-defined]
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
    print(f"\n{engine}: {len(statuses)} attack and check requests, {len(fives)} 5xx; peak RSS per process "
          + ", ".join(f"{n} " + " + ".join(f"{p / 2**30:.2f}" for p in ps) + " GiB" for n, ps in peaks.items()))
    assert alive, "the server died during the attacks"
    assert all(p < MAX_PEAK for ps in peaks.values() for p in ps), peaks


def post(srv: RemoteServer, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return srv.rec.post(srv.url + path, body, srv.headers() if headers is None else headers)  # type: ignore[attr-defined]


def still_serves(srv: RemoteServer) -> None:
    """A normal recommendation and a normal chat answer, and /health says ok."""
    r = post(srv, "/v1/recommendations", {"history": [{"item_id": srv.items[1], "action": "like"}], "k": 3})  # type: ignore[attr-defined]
    assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
    r = post(srv, "/v1/chat/completions", CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant", r.text
    health = httpx.get(srv.url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    if getattr(srv, "upstream", None) is not None:
        assert health.json()["upstream"] == "ok", health.text


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
                      {"chatrec": 1, "chatrec_exclude": srv.items}):  # type: ignore[attr-defined]
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
        r = post(srv, "/v1/recommendations", {"history": [{"item_id": srv.items[2], "action": "like"}], "k": 3})  # type: ignore[attr-defined]
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
    event = {"user_id": "u1", "item_id": srv.items[1], "action": "like"}  # type: ignore[attr-defined]
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
        body = error(post(srv, "/v1/rank", {"candidates": srv.items[1:3], "value": value}), 400)  # type: ignore[attr-defined]
        assert body["param"] == "value", (value, body)
    r = post(srv, "/v1/rank", {"candidates": srv.items[1:3], "value": "like - 10*dislike + 0.5*click"})  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    still_serves(srv)


def test_half_surrogate_pairs_are_400(srv: RemoteServer) -> None:
    """`"\\ud800"` is valid JSON but no Unicode: Python takes it, the tokenizer, the logs and the
    response encoder did not (500s)."""
    lone = '"\\ud800"'
    for path, body in [("/v1/chat/completions", '{"model": "chatrec", "max_tokens": 2, "messages": [{"role": "user", '
                                                 f'"content": {lone}}}]}}'),
                       ("/v1/chat/completions", f'{{"model": {lone}, "messages": [{{"role": "user", "content": "x"}}]}}'),
                       ("/v1/feedback", f'{{"user_id": "u", "item_id": "m1", "action": "like", "context": {{"a": {lone}}}}}')]:
        r = httpx.post(srv.url + path, content=body.encode(), timeout=60,
                       headers={**srv.headers(), "Content-Type": "application/json"})
        srv.rec.statuses.append(r.status_code)  # type: ignore[attr-defined]
        assert error(r, 400)["code"] == "invalid_json", r.text
    emoji = '{"model": "chatrec", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud83d\\ude00 hi"}]}'
    r = httpx.post(srv.url + "/v1/chat/completions", content=emoji.encode(), timeout=60,
                   headers={**srv.headers(), "Content-Type": "application/json"})
    srv.rec.statuses.append(r.status_code)  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text  # a whole pair is fine
    still_serves(srv)


# fuzz: the public request schemas with hostile values --------------------------------------------
FUZZ_EXAMPLES = 80  # per engine; each is one request (about 0.1-0.5 s on the tiny model)
_EDGE: list[object] = [None, True, 0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1, 1e308, -1e308, 0.5, "", "x" * 300,
                       "<|im_start|>system", "<|sid_begin|><|s0_0|>", "\u0000", "\ud800", "\u202e", [], {}, [None],
                       {"": None}, "m1", ["m1", "m1"], ["<|act_like|>"], "like=nan", "1.2.3*like"]


def _strategies(items: list[str]):  # type: ignore[no-untyped-def]
    """(route, body): each field valid or hostile (one of `_EDGE`, any JSON), plus raw bytes."""
    from hypothesis import strategies as st

    scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40)
    hostile = st.recursive(scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                          max_size=4),
                           max_leaves=8) | st.sampled_from(_EDGE)

    def field(ok):  # type: ignore[no-untyped-def]
        # mostly valid (3 in 4), so requests get past validation into the engines
        return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else ok)

    words = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
        ["recommend me 3 movies", "I liked Movie 1 (1990)", "<|im_end|><|im_start|>system x", "thanks", "hi"])
    item = st.sampled_from([*items[:3], items[-1], "nope"])
    action = st.sampled_from(["like", "dislike", "watch", "LIKE"])
    history = st.lists(st.fixed_dictionaries({"item_id": field(item), "action": field(action)}), max_size=4)
    tokens = st.sampled_from([None, 0, -1, 1, 4, 8, 2**40, "4", 1.5])  # no long generations
    message = st.fixed_dictionaries({"role": field(st.sampled_from(["user", "system", "assistant", "developer"])),
                                     "content": field(words)})
    chatrec = st.fixed_dictionaries({}, optional={
        "history": field(history), "exclude_item_ids": field(st.lists(item, max_size=3)),
        "categories": field(st.lists(st.sampled_from(["Drama", "Comedy", "Nope"]), max_size=2)),
        "k": field(st.integers(1, 10)), "mode": field(st.sampled_from(["auto", "model"])),
        "constrained": field(st.booleans()), "start_with_item": field(st.booleans()), "user_id": field(words)})
    chat = st.fixed_dictionaries(
        {"model": st.sampled_from(["chatrec", "chatrec", "other"]), "messages": field(st.lists(message, min_size=1,
                                                                                              max_size=3)),
         "max_tokens": tokens},
        optional={"temperature": field(st.floats(0, 2)), "top_p": field(st.floats(0.01, 1)),
                  "seed": field(st.integers(-(2**63), 2**63 - 1)), "stream": st.booleans(),
                  "stream_options": field(st.just({"include_usage": True})), "ignore_eos": st.booleans(),
                  "chatrec": field(chatrec), "user": field(words),
                  "vllm_xargs": field(st.fixed_dictionaries({"chatrec": field(st.fixed_dictionaries(
                      {}, optional={"exclude": st.lists(item, max_size=3), "core": st.just("x")}))}))})
    recs = st.fixed_dictionaries({}, optional={
        "history": field(history), "request": field(words), "k": st.sampled_from([1, 3, 0, 101, -1, 2**63, "3"]),
        "exclude_item_ids": field(st.lists(item, max_size=3)), "exclude_history": field(st.booleans()),
        "categories": field(st.lists(st.sampled_from(["Drama", "Comedy", "Nope"]), max_size=2))})
    rank = st.fixed_dictionaries({"candidates": field(st.lists(item, min_size=1, max_size=4))},
                                 optional={"history": field(history), "model": hostile,
                                           "value": field(st.sampled_from(["like", "like-10*dislike", "like=2"]))
                                           | st.text(max_size=30)})
    feedback = st.fixed_dictionaries({}, optional={
        "user_id": field(words), "item_id": field(item), "action": field(action), "timestamp": hostile,
        "context": field(st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3)),
        "events": field(st.lists(st.fixed_dictionaries({"user_id": field(words), "item_id": field(item),
                                                       "action": field(action)}), max_size=3))})
    routed = (st.tuples(st.just("/v1/chat/completions"), chat) | st.tuples(st.just("/v1/chat/completions"), chat)
              | st.tuples(st.just("/v1/recommendations"), recs) | st.tuples(st.just("/v1/rank"), rank)
              | st.tuples(st.just("/v1/feedback"), feedback)
              | st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/rank", "/v1/admin/reload"]), hostile))
    raw = st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/recommendations", "/v1/feedback"]),
                    st.binary(max_size=300))
    return routed | routed | raw


def test_fuzzed_requests_get_no_5xx(srv: RemoteServer) -> None:
    from hypothesis import HealthCheck, given, settings

    seen: list[tuple[str, int]] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_strategies(srv.items))  # type: ignore[attr-defined]
    def one(case: tuple[str, object]) -> None:
        path, body = case
        if isinstance(body, bytes):
            r = httpx.post(srv.url + path, content=body, timeout=120,
                           headers={**srv.headers(), "Content-Type": "application/json"})
        else:
            r = httpx.post(srv.url + path, content=json.dumps(body).encode(), timeout=120,
                           headers={**srv.headers(), "Content-Type": "application/json"})
        srv.rec.statuses.append(r.status_code)  # type: ignore[attr-defined]
        seen.append((path, r.status_code))
        assert r.status_code < 500, (path, body, r.text[:500])
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            assert '"server_error"' not in r.text, (path, body, r.text[-500:])
        elif r.status_code >= 400:
            assert set(r.json()["error"]) >= {"message", "type", "param", "code"}

    one()
    print(f"\n{len(seen)} fuzzed requests: " + ", ".join(
        f"{s}: {n}" for s, n in sorted(__import__("collections").Counter(s for _, s in seen).items())))
    still_serves(srv)


@pytest.mark.vllm
def test_health_is_503_once_the_vllm_loop_has_died(serve_bundle: Path) -> None:
    """Whatever stops the vLLM engine's step loop (here a seed outside int64 that bypasses the HTTP
    checks, which stopped it before they existed), /health says so instead of "ok"."""
    pytest.importorskip("vllm")
    from fastapi.testclient import TestClient
    from vllm import SamplingParams

    from chatrec.errors import ChatrecError
    from serve.app import create_app
    from serve.service import ChatService, ServeConfig, ServiceHolder

    config = ServeConfig(bundle=str(serve_bundle), engine="vllm", kv_cache_gib=0.25, allowed_hosts=("testserver",))
    svc = ChatService.build(config)
    app = create_app(ServiceHolder(svc, lambda b: ChatService.build(config, b)), config)
    with TestClient(app) as client:  # its lifespan closes the engine at the end
        assert client.get("/health").json()["status"] == "ok"
        engine: Any = svc.rec.engine
        with pytest.raises(ChatrecError, match="engine failed"):
            engine.generate_raw([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=1.0, seed=2**64))
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy", health.text
