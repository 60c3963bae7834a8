"""Served = measured: every engine, and the gateway over stock vLLM with the plugin, returns the
top-K that `chatrec eval` computes for the same history, up to float noise.

A small bundle is trained (a few dozen sequence-recipe steps, so scores are peaked, not the ties
of a random model) and exported; each server then answers the same histories of 1, 3, 20 and 100
events, with and without exclusions, and is compared with the recommender that `chatrec eval`
builds in process. This caught the vLLM engine's left-padded history (`--align-history auto`),
which served a model a third worse than the evaluation reported.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serve.conftest import RemoteServer, StockVLLM, tiny_bundle

pytestmark = pytest.mark.vllm

K = 10
HISTORY_LENGTHS = (1, 3, 20, 100)
MIN_OVERLAP = 0.95  # mean share of each reference top-K that a server also returns
SCORE_TOL = 2e-3  # |served - evaluated| summed log-prob of a common item (float32 on both sides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    from finetune.data import BuildConfig, build_bundle
    from finetune.export import export_bundle
    from finetune.sequence import SequenceConfig, train_sequences

    bundle = tiny_bundle(tmp_path_factory.mktemp("parity") / "bundle", n_items=120, n_users=48)
    build_bundle(bundle, BuildConfig(history_len=5))
    train_sequences(bundle, SequenceConfig(max_steps=60, batch_size=8, keep_layers=2, rows_steps=10, warmup_steps=5,
                                           eval_users=0, bf16="off", num_threads=2), quiet=True)
    export_bundle(bundle)
    return bundle.root


def requests(bundle: Path) -> list[dict[str, Any]]:
    """Histories of each length drawn from the log's items, each once as is and once with exclusions."""
    import pandas as pd

    log = pd.read_parquet(bundle / "interactions.parquet")
    items, actions = log["item_id"].astype(str).tolist(), log["action"].astype(str).tolist()
    rng = np.random.default_rng(7)
    out = []
    for n in HISTORY_LENGTHS:
        picks = rng.integers(0, len(items), size=n)
        history = [{"item_id": items[i], "action": actions[i]} for i in picks]
        others = sorted({items[i] for i in rng.integers(0, len(items), size=5)} - {h["item_id"] for h in history})
        out.append({"history": history, "k": K, "exclude_history": False})
        out.append({"history": history, "k": K, "exclude_item_ids": others})
    return out


@pytest.fixture(scope="module")
def evaluated(trained: Path) -> list[list[tuple[str, float]]]:
    """The top-K of the recommender `chatrec eval` scores the LLM with (transformers, in process)."""
    from chatrec.bundle import Bundle
    from chatrec.evaluation import LLMSystem

    system = LLMSystem("llm", Bundle(trained), engine="transformers")
    system.fit(None, None)  # type: ignore[arg-type]  (the LLM system reads only its bundle)
    try:
        return [[(r.item_id, r.score) for r in system.rec.recommend(
            body["history"], K, exclude_item_ids=body.get("exclude_item_ids", ()),
            exclude_history=body.get("exclude_history", True))] for body in requests(trained)]
    finally:
        system.close()


@pytest.fixture(scope="module", params=["transformers", "vllm", "upstream"])
def served(request: pytest.FixtureRequest, trained: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RemoteServer]:
    """`chatrec serve` with default options on each engine; `upstream`: the gateway over stock vLLM."""
    bundle = tmp_path_factory.mktemp(f"parity-{request.param}") / "bundle"
    shutil.copytree(trained, bundle)
    upstream = StockVLLM(bundle / "export", bundle.parent / "vllm.log") if request.param == "upstream" else None
    args = ["--upstream", upstream.url] if upstream else []
    try:
        srv = RemoteServer(bundle, "remote" if upstream else request.param, *args, api_key=None)
    except BaseException:
        if upstream:
            upstream.stop()
        raise
    yield srv
    srv.stop()
    if upstream:
        upstream.stop()


def test_served_top_k_equals_the_evaluated_top_k(trained: Path, served: RemoteServer,
                                                 evaluated: list[list[tuple[str, float]]]) -> None:
    overlaps, worst = [], 0.0
    for body, want in zip(requests(trained), evaluated, strict=True):
        r = httpx.post(served.url + "/v1/recommendations", json=body, timeout=120)
        assert r.status_code == 200, r.text
        got = {it["item_id"]: it["score"] for it in r.json()["items"]}
        assert len(got) == K
        overlaps.append(len(got.keys() & {i for i, _ in want}) / K)
        worst = max([worst, *(abs(got[i] - s) for i, s in want if i in got)])
    lengths = [len(b["history"]) for b in requests(trained)]
    assert np.mean(overlaps) >= MIN_OVERLAP and min(overlaps) >= 0.8, list(zip(lengths, overlaps, strict=True))
    assert worst < SCORE_TOL, worst
