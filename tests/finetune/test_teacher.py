"""The teacher path against a real local HTTP server speaking the OpenAI chat-completions shape."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chatrec.bundle import Bundle
from finetune.data import BuildConfig, build_bundle, read_jsonl
from finetune.teacher import Teacher, TeacherConfig


class FakeOpenAI:
    """A tiny OpenAI-compatible endpoint on 127.0.0.1 that counts requests and can be told to fail."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if owner.fail:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "boom"}}')
                    return
                n_facts = body["messages"][-1]["content"].count("\n- ")
                reply = {"choices": [{"index": 0, "message": {"role": "assistant",
                          "content": f"TEACHER weighed {n_facts} facts about this user's taste."}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


def test_teacher_answers_are_used_and_cached(tmp_path, fake_openai):
    cfg = TeacherConfig(url=fake_openai.url, api_key="k", max_requests_per_s=1000)
    teacher = Teacher(cfg, cache_path=tmp_path / "cache.jsonl")
    text = teacher.trace(["Liked genres so far: Drama (3).", "Candidate: X."], fallback="TEMPLATE")
    assert text.startswith("TEACHER weighed 2 facts")
    assert fake_openai.requests[0]["path"] == "/v1/chat/completions"
    assert fake_openai.requests[0]["auth"] == "Bearer k"
    # same facts again, and from a fresh Teacher reading the cache file: no new request
    assert teacher.trace(["Liked genres so far: Drama (3).", "Candidate: X."], "TEMPLATE") == text
    again = Teacher(cfg, cache_path=tmp_path / "cache.jsonl")
    assert again.trace(["Liked genres so far: Drama (3).", "Candidate: X."], "TEMPLATE") == text
    assert len(fake_openai.requests) == 1
    assert again.stats["cached"] == 1


def test_teacher_falls_back_on_http_error_and_switches_off(fake_openai):
    fake_openai.fail = True
    teacher = Teacher(TeacherConfig(url=fake_openai.url, max_failures=2, max_requests_per_s=1000))
    outs = [teacher.trace([f"fact {i}"], fallback=f"TEMPLATE {i}") for i in range(5)]
    assert outs == [f"TEMPLATE {i}" for i in range(5)]
    assert len(fake_openai.requests) == 2  # switched off after two failures in a row
    assert teacher.stats["fallback"] == 5


def test_teacher_falls_back_when_nothing_listens():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    teacher = Teacher(TeacherConfig(url=f"http://127.0.0.1:{port}/v1", timeout_s=2))
    assert teacher.trace(["fact"], fallback="TEMPLATE") == "TEMPLATE"


def test_rate_limit_spaces_calls(fake_openai):
    import time

    teacher = Teacher(TeacherConfig(url=fake_openai.url, max_requests_per_s=20))
    t0 = time.monotonic()
    for i in range(5):
        teacher.trace([f"fact {i}"], "T")
    assert time.monotonic() - t0 >= 4 / 20 * 0.9


def test_data_build_with_teacher(tmp_path, tables, fake_openai):
    catalog, inter, sids = tables
    bundle = Bundle(tmp_path / "b").ensure()
    catalog.to_parquet(bundle.catalog_path)
    inter.to_parquet(bundle.interactions_path)
    sids.to_parquet(bundle.sids_path)
    cfg = BuildConfig(teacher=TeacherConfig(url=fake_openai.url, max_requests_per_s=1000),
                      task_weights={"next_item": 1.0, "conversation": 0.2})
    counts = build_bundle(bundle, cfg)
    convs = [r for r in read_jsonl(bundle.train_dir / "train.jsonl") if r["task"] == "conversation"]
    assert convs and all(r["messages"][2]["content"].startswith("<think>TEACHER weighed") for r in convs)
    assert counts["teacher_ok"] >= 1 and (bundle.train_dir / "teacher_cache.jsonl").exists()
