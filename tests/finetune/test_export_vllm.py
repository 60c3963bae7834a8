"""The exported folders load in vLLM: merged, and base + LoRA-only adapter with --enable-lora."""

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

    from chatrec.testing import make_tiny_bundle
    from finetune.data import BuildConfig, build_bundle
    from finetune.export import export_bundle
    from finetune.recipe import FinetuneConfig, finetune
    from tokenizer_ext import load_extended

    b = make_tiny_bundle(tmp_path / "b", hidden=128)  # head_dim 32: vLLM CPU attention refuses 16
    build_bundle(b, BuildConfig(history_len=3))
    finetune(b, FinetuneConfig(max_steps=3, batch_size=4, learning_rate=2e-2, lora_dropout=0.0, eval_users=0,
                               save_every=0, num_threads=1, tasks=("next_item",)), quiet=True)
    export_bundle(b)
    base, tok, token_map = load_extended(b.model_dir)
    ref = PeftModel.from_pretrained(base, str(b.adapter_dir)).eval()
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
