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
