"""The exported folders of a `--lora` sequence-recipe run load in vLLM: merged, and base + LoRA-only
adapter with --enable-lora, and both generate what the trained model generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatrec.deps import is_vllm_available

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(not is_vllm_available(), reason="needs the vllm extra")]


def test_vllm_loads_both_export_layouts_and_agrees_with_peft(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from chatrec.testing import make_tiny_bundle
    from finetune.data import BuildConfig, build_bundle
    from finetune.export import export_bundle
    from finetune.sequence import SequenceConfig, train_sequences
    from tokenizer_ext import load_extended

    b = make_tiny_bundle(tmp_path / "b", hidden=128)  # head_dim 32: vLLM CPU attention refuses 16
    build_bundle(b, BuildConfig(history_len=3))
    train_sequences(b, SequenceConfig(lora=True, keep_layers=None, max_steps=4, batch_size=4, rows_steps=1,
                                      warmup_steps=1, learning_rate=2e-2, eval_users=0, bf16="off", num_threads=1),
                    quiet=True)
    out = export_bundle(b)
    base = AutoModelForCausalLM.from_pretrained(out["multi_base"])
    _, tok, token_map = load_extended(b.path("trained"))
    ref = PeftModel.from_pretrained(base, str(b.adapter_dir)).eval()  # the trained adapter on the exported base
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                     return_dict=False) + [token_map.sid_begin]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(ref(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    want = ids[len(prompt):]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("vllm_export_check.py")), str(b.export_dir),
                           json.dumps(prompt)], env=env, capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    assert got["merged"] == want
    assert got["multi"] == want


def test_chatrec_vllm_engine_serves_the_lora_export_as_the_transformers_engine_does(tmp_path, monkeypatch):
    """`Recommender.from_bundle(engine="vllm")` (what `chatrec serve` runs) loads the merged export of a
    `--lora` run and returns the top-10 the transformers engine returns for the same histories."""
    import pandas as pd

    from chatrec.recommender import Recommender
    from chatrec.testing import make_tiny_bundle
    from finetune.data import BuildConfig, build_bundle
    from finetune.export import export_bundle
    from finetune.sequence import SequenceConfig, train_sequences

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    b = make_tiny_bundle(tmp_path / "b", hidden=128)  # head_dim 32: vLLM CPU attention refuses 16
    build_bundle(b, BuildConfig(history_len=3))
    train_sequences(b, SequenceConfig(lora=True, keep_layers=None, max_steps=30, batch_size=8, rows_steps=5,
                                      warmup_steps=3, learning_rate=2e-2, eval_users=0, bf16="off", num_threads=1),
                    quiet=True)
    export_bundle(b)
    log = pd.read_parquet(b.interactions_path)
    histories = [[{"item_id": str(i), "action": "like"} for i in log["item_id"].iloc[s:s + n]]
                 for s, n in ((0, 1), (5, 3), (20, 8))]
    results = {}
    for engine, kwargs in (("transformers", {}), ("vllm", {"kv_cache_gib": 0.25, "max_model_len": 512})):
        rec = Recommender.from_bundle(b, engine=engine, **kwargs)
        try:
            results[engine] = [[r.item_id for r in rec.recommend(h, k=10)] for h in histories]
        finally:
            rec.close()
    assert all(len(top) == 10 for top in results["vllm"])
    overlap = [len(set(a) & set(v)) / 10 for a, v in zip(results["transformers"], results["vllm"], strict=True)]
    assert min(overlap) >= 0.9, (overlap, results)
