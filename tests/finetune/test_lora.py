"""`--lora` on the sequence recipe: only the adapters and the added-token rows change, and the export
holds both the merged model and base + adapter that compute the same logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatrec.bundle import Bundle
from finetune.data import BuildConfig, build_bundle


@pytest.fixture
def lora_bundle(tmp_path) -> tuple[Bundle, dict]:
    from chatrec.testing import make_tiny_bundle
    from finetune.sequence import SequenceConfig, train_sequences

    b = make_tiny_bundle(tmp_path / "b")
    build_bundle(b, BuildConfig(history_len=3))
    counts = train_sequences(b, SequenceConfig(lora=True, keep_layers=None, max_steps=5, batch_size=4, rows_steps=1,
                                               warmup_steps=1, learning_rate=2e-2, chat_share=0.3, chat_batch_size=2,
                                               eval_users=3, bf16="off", num_threads=1), quiet=True)
    return b, counts


def _tensors(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_lora_changes_only_the_adapters_and_the_new_rows(lora_bundle):
    import torch
    from safetensors.torch import load_file

    from tokenizer_ext import TokenMap

    b, counts = lora_bundle
    assert counts["lora"] and counts["layers"] == 2 and counts["steps"] == 5  # the tiny model's full depth
    assert 0.0 <= counts["valid_hr@10"] <= 1.0
    config = json.loads((b.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 16 and not config.get("modules_to_save") and not config.get("trainable_token_indices")
    adapter = load_file(str(b.adapter_dir / "adapter_model.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert {k.split(".")[-3] for k in adapter} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    new_ids = TokenMap.load(b.model_dir / "chatrec_tokens.json").all_ids()
    first = min(new_ids)
    base, trained = _tensors(b.model_dir), _tensors(b.path("trained"))
    rows, hidden = base["model.embed_tokens.weight"].shape  # the added rows (+ the vocabulary's padding rows)
    assert counts["trained_params"] == sum(v.numel() for v in adapter.values()) + (rows - first) * hidden
    assert set(base) == set(trained)
    scale = config["lora_alpha"] / config["r"]
    merged_layers = 0
    for name, before in base.items():
        after = trained[name]
        if "embed_tokens" in name:
            torch.testing.assert_close(after[:first], before[:first], rtol=0, atol=0)  # base rows frozen
            assert not torch.allclose(after[first:], before[first:])  # the new rows trained
            continue
        module = name.removesuffix(".weight")
        a = next((v for k, v in adapter.items() if k.endswith(module.removeprefix("model.") + ".lora_A.weight")), None)
        if a is None:  # norms and anything else outside the adapters: bit-identical
            torch.testing.assert_close(after, before, rtol=0, atol=0, msg=name)
            continue
        b_mat = adapter[next(k for k in adapter if k.endswith(module.removeprefix("model.") + ".lora_B.weight"))]
        delta = after - before
        assert float(delta.abs().max()) > 0, name  # the adapter moved
        torch.testing.assert_close(delta, scale * b_mat @ a, atol=1e-5, rtol=1e-3)  # ... and is the only change
        merged_layers += 1
    assert merged_layers == 7 * 2


def test_export_writes_merged_and_base_plus_adapter_that_agree(lora_bundle):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.export import export_bundle
    from tokenizer_ext import load_extended

    b, _ = lora_bundle
    out = export_bundle(b)
    assert set(out) == {"merged", "multi_base", "multi_adapter"}
    assert (b.adapter_dir / "adapter_model.safetensors").exists()  # the bundle's adapter is kept
    merged, tok, token_map = load_extended(b.export_dir)
    base = AutoModelForCausalLM.from_pretrained(out["multi_base"])
    config = json.loads((b.export_dir / "multi" / "adapters" / "chatrec" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == out["multi_base"]
    with_adapter = PeftModel.from_pretrained(base, out["multi_adapter"]).eval()
    ids = tok("<|act_like|>", add_special_tokens=False)["input_ids"] + token_map.level_token_ids(0)[:3]
    with torch.no_grad():
        want = merged.eval()(input_ids=torch.tensor([ids])).logits[0].numpy()
        got = with_adapter(input_ids=torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    with torch.no_grad(), with_adapter.disable_adapter():
        plain = with_adapter(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert not np.allclose(plain, want, atol=1e-4)  # the adapter matters in that layout
