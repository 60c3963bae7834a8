"""Pure pieces of the server: span rendering, the durable log, request validation, atomic swap."""

from __future__ import annotations

import json
import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from chatrec.constrained import ConstraintCore, SpanTokens
from chatrec.engine import TokenStep
from chatrec.errors import ConfigError
from chatrec.trie import ItemTrie
from serve.feedback import JsonlLog, interaction_row
from serve.protocol import ChatCompletionRequest, FeedbackRequest
from serve.render import SpanRenderer
from serve.service import ServiceHolder

BEGIN, END = 40, 41


class FakeTokenizer:
    """Token i decodes to a word; 99 is half of a multi-byte character."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("\ufffd" if i == 99 else ("é" if i == 98 else f"w{i} ") for i in ids)


def renderer() -> SpanRenderer:
    trie = ItemTrie.from_sequences(np.array([[10, 20], [11, 21]]), ["a", "b"])
    core = ConstraintCore(trie, SpanTokens(BEGIN, END, np.array([10, 11, 20, 21])))
    return SpanRenderer(FakeTokenizer(), core, {"a": "Alien (1979)", "b": "Brazil (1985)"},
                        {"a": "<|sid_begin|><|s0_0|><|s1_0|><|sid_end|>", "b": "..."})


def test_spans_render_as_titles_incrementally() -> None:
    r = renderer()
    steps = [1, 2, BEGIN, 11, 21, END, 3, BEGIN, 10]  # the last span is cut off by max_tokens
    deltas = [r.feed(TokenStep(t, -0.5)) for t in steps]
    deltas.append(r.finish())
    assert "".join(deltas) == r.text == "w1 w2 Brazil (1985)w3 "
    assert [(i.item_id, i.title, i.score) for i in r.items] == [("b", "Brazil (1985)", -1.0)]
    assert deltas[5] == "Brazil (1985)"  # the title arrives when the span closes


def test_partial_characters_are_held_back() -> None:
    r = renderer()
    assert r.feed(TokenStep(99, 0.0)) == ""


def test_jsonl_log_concurrent_threads_and_processes(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "logs" / "feedback.jsonl")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.append([interaction_row(f"u{i}", "m1", "like", context={"pad": "x" * 5000})] * 3),
                      range(40)))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_from_process, args=(str(log.path), k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = log.read()
    assert len(rows) == 40 * 3 + 3 * 20
    assert all(set(r) == {"user_id", "item_id", "action", "timestamp", "context"} for r in rows)
    assert json.loads(rows[0]["context"]) == {"pad": "x" * 5000}


def _append_from_process(path: str, k: int) -> None:
    log = JsonlLog(path)
    for i in range(20):
        log.append([interaction_row(f"p{k}", f"m{i}", "click", context={"pad": "y" * 3000})])


def test_request_validation() -> None:
    ok = ChatCompletionRequest(model="chatrec", messages=[{"role": "user", "content": "hi"}],
                               vllm_xargs={"chatrec": {"exclude": ["m1"], "categories": ["Drama"]}},
                               chatrec={"exclude_item_ids": ["m2"]})
    opts = ok.options()
    assert opts.exclude_item_ids == ["m2", "m1"] and opts.categories == ["Drama"]
    with pytest.raises(ValidationError, match="list of strings"):
        ChatCompletionRequest(model="x", messages=[{"role": "user", "content": "hi"}],
                              vllm_xargs={"chatrec": {"exclude": "m1"}})
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="x", messages=[])
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="x", messages=[{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="x", messages=[{"role": "user", "content": "hi"}], chatrec={"bogus": 1})
    with pytest.raises(ValidationError, match="lower-case"):
        FeedbackRequest(user_id="u", item_id="m1", action="Like!").all_events()


class FakeService:
    def __init__(self, name: str):
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_holder_swaps_atomically_and_closes_old_when_idle() -> None:
    holder = ServiceHolder(FakeService("old"), lambda bundle: FakeService("new"))  # type: ignore[arg-type]
    old = holder.acquire()
    holder.swap(FakeService("v2"))  # type: ignore[arg-type]
    assert holder.current.name == "v2" and holder.generation == 1  # type: ignore[attr-defined]
    assert not old.closed  # type: ignore[attr-defined]  # a request is still in flight on it
    holder.release(old)
    assert old.closed  # type: ignore[attr-defined]
    with holder.use() as svc:
        assert svc.name == "v2"  # type: ignore[attr-defined]
    idle = holder.current
    holder.swap(FakeService("v3"))  # type: ignore[arg-type]
    assert idle.closed  # type: ignore[attr-defined]  # no request in flight: closed at once


def test_serve_cli_help_and_bad_input(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chatrec.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--api-key" in result.output and "127.0.0.1" in result.output
    result = runner.invoke(app, ["serve", "--bundle", str(tmp_path), "--engine", "bogus"])
    assert result.exit_code == 2 and "`engine` must be one of" in result.output
    result = runner.invoke(app, ["serve", "--bundle", str(tmp_path / "missing"), "--engine", "transformers"])
    assert result.exit_code == 4 and "chatrec tokenizer extend" in result.output


def test_a_second_reload_while_one_runs_is_refused() -> None:
    import threading
    from types import SimpleNamespace

    from serve.service import ReloadBusy

    def service(name: str) -> FakeService:
        svc = FakeService(name)
        svc.rec = SimpleNamespace(bundle=SimpleNamespace(root=Path("/srv") / name),  # type: ignore[attr-defined]
                                  core=SimpleNamespace(trie=SimpleNamespace(n_items=3)))
        return svc

    started, release = threading.Event(), threading.Event()

    def slow_factory(bundle: str) -> FakeService:
        started.set()
        release.wait(10)
        return service("new")

    holder = ServiceHolder(service("old"), slow_factory)  # type: ignore[arg-type]
    results: list[dict] = []
    worker = threading.Thread(target=lambda: results.append(holder.reload()))
    worker.start()
    assert started.wait(10)
    with pytest.raises(ReloadBusy):
        holder.reload()
    release.set()
    worker.join(10)
    assert results[0]["bundle"] == "new" and holder.generation == 1  # a name, not the server's path


def test_stream_release_runs_once_whichever_path_ends_it() -> None:
    from serve.app import _once

    holder = ServiceHolder(FakeService("old"), lambda bundle: FakeService("new"))  # type: ignore[arg-type]
    old = holder.acquire()
    holder.swap(FakeService("v2"))  # type: ignore[arg-type]
    release = _once(lambda: holder.release(old))
    release()  # the generator's finally
    release()  # the response's background task (or the reverse order)
    assert old.closed and holder._inflight == {}  # type: ignore[attr-defined]


def test_vllm_processor_never_raises_inside_the_engine_step() -> None:
    """An unknown category or an all-excluded filter in stock vLLM: that request names no item, the
    batch goes on (raising in `update_state` would stop the engine for every request)."""
    pytest.importorskip("vllm")
    import pandas as pd
    from vllm import SamplingParams

    from serve.vllm_processor import ChatrecLogitsProcessor

    trie = ItemTrie.from_sequences(np.array([[10, 20], [11, 21]]), ["a", "b"])
    catalog = pd.DataFrame({"item_id": ["a", "b"], "categories": [["Drama"], ["Comedy"]]})
    core = ConstraintCore(trie, SpanTokens(BEGIN, END, np.array([10, 11, 20, 21])), catalog)
    proc = ChatrecLogitsProcessor.__new__(ChatrecLogitsProcessor)
    proc._default_core, proc.rows = core, {}
    for args in ({"categories": ["Nope"]}, {"exclude": ["a", "b"]}):
        params = SamplingParams(extra_args={"chatrec": args})
        ChatrecLogitsProcessor.validate_params(params)
        row = proc._new_row(params, [1, BEGIN], [])
        assert row is not None and row[0].allowed_tokens().tolist() == [END]  # the span can only close
    with pytest.raises(ValueError, match="1 to 256 characters"):
        ChatrecLogitsProcessor.validate_params(SamplingParams(extra_args={"chatrec": {"exclude": ["x" * 300]}}))
    with pytest.raises(ValueError, match="at most 10000"):
        ChatrecLogitsProcessor.validate_params(SamplingParams(extra_args={"chatrec": {"exclude": ["x"] * 10_001}}))


def test_a_repetition_loop_ends_the_answer() -> None:
    """A model that says the same sentence again and again stops after the first repeat."""
    from types import SimpleNamespace

    from chatrec.engine import GenerationParams
    from serve.service import REPEAT_NGRAM, ChatService

    sentence = list(range(100, 112))  # "I'm sorry for your loss." as 12 tokens

    def generate(prompt, params):
        for _ in range(20):
            for t in sentence:
                yield TokenStep(t, -0.1)

    stub = SimpleNamespace(rec=SimpleNamespace(engine=SimpleNamespace(generate=generate)))
    out = list(ChatService._steps(stub, [1], GenerationParams(max_tokens=240)))  # type: ignore[arg-type]
    tokens = [s.token_id for s in out if not isinstance(s, str)]
    assert out[-1] == "stop" and len(tokens) < len(sentence) + REPEAT_NGRAM
    assert tokens[: len(sentence)] == sentence


def test_chat_on_a_shop_catalog_speaks_of_its_own_items(tmp_path: Path) -> None:
    """Any catalog: the domain word comes from the bundle, categories and titles from its catalog."""
    from chatrec.testing import make_tiny_bundle
    from serve.protocol import ChatCompletionRequest
    from serve.service import ChatService, ServeConfig

    bundle = make_tiny_bundle(tmp_path / "shop", n_items=36, domain="product")
    svc = ChatService.build(ServeConfig(bundle=str(bundle.root), engine="transformers"))
    try:
        title = str(svc.rec.catalog["title"].iloc[0])  # a telescope
        r = svc.chat(ChatCompletionRequest(model="chatrec", messages=[
            {"role": "user", "content": f"I loved the {title}. Can you recommend some eyepieces?"}]))
        text, extra = r["choices"][0]["message"]["content"], r["chatrec"]
        assert "Eyepieces products" in text and "movie" not in text.lower()
        assert [x["item_id"] for x in extra["linked"]] == ["p0"] and extra["filters"]["categories"] == ["Eyepieces"]
        cats = svc.rec.catalog.set_index("item_id")["categories"]
        assert extra["items"] and all("Eyepieces" in list(cats[i["item_id"]]) for i in extra["items"])
        r = svc.chat(ChatCompletionRequest(model="chatrec", messages=[{"role": "user", "content": "thanks"}]))
        assert "product you loved" in r["choices"][0]["message"]["content"]
    finally:
        svc.close()


def test_last_level_setting_reaches_retrieval_and_both_settings_return_real_items(tmp_path: Path) -> None:
    """`--last-level`: prior (the default) scores the disambiguation level without the model, model asks it."""
    from chatrec.testing import make_tiny_bundle
    from serve.service import ChatService, ServeConfig

    with pytest.raises(ConfigError, match="`last_level` must be one of model, prior"):
        ServeConfig(bundle=str(tmp_path), engine="transformers", last_level="popular")
    bundle = make_tiny_bundle(tmp_path / "b", n_items=36)
    svc = ChatService.build(ServeConfig(bundle=str(bundle.root), engine="transformers"))
    try:
        assert svc.rec.last_level == "prior"
        history = [("m1", "like"), ("m2", "like")]
        asked: dict[str, int] = {}
        score = svc.rec.engine.next_token_scores

        def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            asked[svc.rec.last_level] = asked.get(svc.rec.last_level, 0) + 1
            return score(*args, **kwargs)

        svc.rec.engine.next_token_scores = counting
        got = {}
        for level in ("prior", "model"):
            svc.rec.last_level = level
            got[level] = [r.item_id for r in svc.rec.recommend(history, k=5)]
        catalog = set(svc.rec.catalog["item_id"])
        assert all(len(ids) == 5 and set(ids) <= catalog - {"m1", "m2"} for ids in got.values())
        assert asked.get("prior", 0) <= svc.rec.core.trie.depth - 1  # at most one model call per earlier level
        assert asked["model"] >= asked.get("prior", 0)
    finally:
        svc.close()


def test_kv_cache_size_is_checked(tmp_path: Path) -> None:
    """`--kv-cache-gib` sizes the vLLM engine's CPU KV cache (its effect on RSS: tests/serve/test_abuse.py)."""
    from serve.service import ServeConfig

    for bad in (0, -1.0):
        with pytest.raises(ConfigError, match="`kv_cache_gib` must be > 0"):
            ServeConfig(bundle=str(tmp_path), engine="transformers", kv_cache_gib=bad)
    assert ServeConfig(bundle=str(tmp_path), engine="transformers", kv_cache_gib=0.25).kv_cache_gib == 0.25
