"""Served = measured for the events reading: `chatrec serve` on vLLM returns the top-K that `chatrec eval`
computes in process for a model finetuned with `--reading events` (one token per (action, item), ranked
from one full-vocabulary log-prob row)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.conftest import RemoteServer, tiny_bundle
from tests.serve.test_parity import SCORE_TOL, K, requests

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    from finetune.export import export_bundle
    from finetune.sequence import SequenceConfig, train_sequences

    # more items than vLLM's 128 `logprob_token_ids`: the engine takes the full-vocabulary row, as on ML-1M
    bundle = tiny_bundle(tmp_path_factory.mktemp("events") / "bundle", n_items=160, n_users=48)
    train_sequences(bundle, SequenceConfig(reading="events", max_steps=60, batch_size=8, rows_steps=10,
                                           warmup_steps=5, eval_users=0, bf16="off", num_threads=2), quiet=True)
    export_bundle(bundle)
    return bundle.root


def test_vllm_serves_the_events_ranking_chatrec_eval_computes(trained: Path) -> None:
    from chatrec.bundle import Bundle
    from chatrec.evaluation import LLMSystem

    system = LLMSystem("llm", Bundle(trained), engine="transformers")
    system.fit(None, None)  # type: ignore[arg-type]  (the LLM system reads only its bundle)
    try:
        bodies = requests(trained)
        want = [[(r.item_id, r.score) for r in system.rec.recommend(
            b["history"], K, exclude_item_ids=b.get("exclude_item_ids", ()),
            exclude_history=b.get("exclude_history", True))] for b in bodies]
    finally:
        system.close()
    srv = RemoteServer(trained, "vllm", api_key=None)
    try:
        overlaps, worst = [], 0.0
        for body, ref in zip(bodies, want, strict=True):
            r = httpx.post(srv.url + "/v1/recommendations", json=body, timeout=120)
            assert r.status_code == 200, r.text
            got = {it["item_id"]: it["score"] for it in r.json()["items"]}
            assert len(got) == K
            overlaps.append(len(got.keys() & {i for i, _ in ref}) / K)
            # the transformers engine scores the rows up to a constant: compare differences to the best
            best_got, best_ref = max(got.values()), ref[0][1]
            worst = max([worst, *(abs((got[i] - best_got) - (s - best_ref)) for i, s in ref if i in got)])
        assert np.mean(overlaps) >= 0.95 and min(overlaps) >= 0.8, overlaps
        assert worst < SCORE_TOL, worst
    finally:
        srv.stop()
