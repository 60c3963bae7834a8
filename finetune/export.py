"""`chatrec export --bundle B`: serveable model folders from the extended model + the LoRA adapter.

Two layouts, both with `chatrec_tokens.json` and `trie.npz` beside the weights:

    export/                     merged: LoRA folded into the linear layers and the trained new-token
                                rows written into embed_tokens (and lm_head when untied); a plain HF
                                folder, `vllm serve export/` or `--model export/`
    export/multi/base/          the extended model with the trained new-token rows written in, no LoRA
    export/multi/adapters/NAME/ LoRA on the transformer layers only (no trainable tokens, no
                                modules_to_save): `--enable-lora --lora-modules NAME=...`

vLLM 0.32 refuses adapters whose `modules_to_save` hold `embed_tokens`/`lm_head` and LoRA on
embeddings, so the new-token rows must live in the base weights for the multi-adapter layout; one
base then serves several adapters (A/B tests, one adapter per surface) trained from the same rows.
`BUNDLE/adapter/` itself is kept untouched.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatrec.bundle import Bundle, atomic_path
from chatrec.errors import BundleError, ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
SIDECAR_FILES = ("chatrec_tokens.json", "trie.npz")
_DELTA = "token_adapter.trainable_tokens_delta"


@dataclass
class ExportConfig:
    """What `chatrec export` writes."""

    merged: bool = field(default=True, metadata={"help": "Write the merged standalone model into BUNDLE/export/."})
    multi_adapter: bool = field(default=True, metadata={"help": "Also write export/multi/ (base with trained rows + LoRA-only adapter)."})
    adapter_name: str = field(default="chatrec", metadata={"help": "Name of the LoRA-only adapter folder under export/multi/adapters/."})
    dtype: str = field(default="float32", metadata={"help": "Saved weight dtype: float32, bfloat16 or float16."})

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"`dtype` must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not self.adapter_name or "/" in self.adapter_name:
            raise ConfigError(f"`adapter_name` must be a plain folder name, got {self.adapter_name!r}")
        if not (self.merged or self.multi_adapter):
            raise ConfigError("nothing to export: set `merged` or `multi_adapter`")


def _read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    if not (adapter_dir / ADAPTER_CONFIG).exists():
        raise BundleError(f"{adapter_dir} holds no peft adapter; run `chatrec finetune` first")
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    return config, load_file(str(adapter_dir / ADAPTER_WEIGHTS))


def trained_token_rows(adapter_dir: Path) -> dict[str, tuple[list[int], Any]]:
    """{module name: (token ids, rows [n, hidden])} of the trainable-token deltas in an adapter."""
    config, weights = _read_adapter(adapter_dir)
    indices = config.get("trainable_token_indices")
    if not indices:
        return {}
    if isinstance(indices, list):
        indices = {"embed_tokens": indices}
    out = {}
    for key, value in weights.items():
        if _DELTA in key:
            module = key.split(_DELTA)[0].rstrip(".").split(".")[-1]
            ids = indices.get(module) or next(iter(indices.values()))
            out[module] = (list(ids), value)
    return out


def write_token_rows(model: Any, adapter_dir: Path) -> int:
    """Copy an adapter's trained new-token rows into `model`'s embedding (and untied lm_head); returns rows written."""
    import torch

    rows = trained_token_rows(adapter_dir)
    written = 0
    with torch.no_grad():
        for module, (ids, values) in rows.items():
            # embed_tokens: the input rows (also the output rows when tied); lm_head: untied output rows
            layer_obj = model.get_output_embeddings() if module == "lm_head" else model.get_input_embeddings()
            targets = [layer_obj]
            for layer in targets:
                if max(ids) >= layer.weight.shape[0]:
                    raise BundleError(f"{adapter_dir}: token id {max(ids)} is outside the model's vocabulary "
                                      f"({layer.weight.shape[0]} rows)")
                layer.weight[torch.tensor(ids)] = values.to(layer.weight.dtype)
                written += len(ids)
    return written


def load_lora_weights(peft_model: Any, adapter_dir: Path, adapter_name: str = "default") -> int:
    """Copy only the LoRA A/B matrices of `adapter_dir` into `peft_model`; returns tensors loaded.

    (peft's `set_peft_model_state_dict` also wants the trainable-token rows, whose index list may
    have grown since the adapter was saved; those rows are carried by `write_token_rows`.)
    """
    import torch

    _, weights = _read_adapter(adapter_dir)
    lora = {k: v for k, v in weights.items() if ".lora_" in k}
    if not lora:
        raise BundleError(f"{adapter_dir}: the adapter holds no LoRA weights")
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for key, value in lora.items():
            name = key.removesuffix(".weight") + f".{adapter_name}.weight"
            if name not in params or params[name].shape != value.shape:
                raise BundleError(f"{adapter_dir}: LoRA weight {key} does not fit the model; "
                                  "was it trained with other target modules or rank?")
            params[name].copy_(value.to(params[name].dtype))
    return len(lora)


def _save_model_folder(model: Any, tokenizer: Any, source_dir: Path, target: Path, dtype: str) -> None:
    import torch

    with atomic_path(target) as tmp:
        model.to(getattr(torch, dtype)).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name in SIDECAR_FILES:
            if (source_dir / name).exists():
                shutil.copy2(source_dir / name, tmp / name)


def export_merged(bundle: Bundle, dtype: str = "float32") -> Path:
    """LoRA + trained rows merged into a standalone HF folder `BUNDLE/export/` (multi/ is kept)."""
    from peft import PeftModel

    from tokenizer_ext import load_extended

    base, tokenizer, _ = load_extended(bundle.require("model"))
    merged = PeftModel.from_pretrained(base, str(bundle.require("adapter"))).merge_and_unload()
    keep_multi = bundle.export_dir / "multi"
    stash = None
    if keep_multi.exists():  # the merged folder replaces export/ whole; carry multi/ over
        stash = bundle.path(".export-multi-keep")
        shutil.rmtree(stash, ignore_errors=True)
        shutil.move(str(keep_multi), stash)
    try:
        _save_model_folder(merged, tokenizer, bundle.model_dir, bundle.export_dir, dtype)
    finally:
        if stash is not None:
            shutil.move(str(stash), bundle.export_dir / "multi")
    return bundle.export_dir


def export_multi(bundle: Bundle, name: str = "chatrec", dtype: str = "float32") -> tuple[Path, Path]:
    """`export/multi/base/` (extended model + trained rows) and `export/multi/adapters/NAME/` (LoRA only)."""
    from safetensors.torch import save_file

    from tokenizer_ext import load_extended

    adapter_dir = bundle.require("adapter")
    base, tokenizer, _ = load_extended(bundle.require("model"))
    write_token_rows(base, adapter_dir)
    base_dir = bundle.export_dir / "multi" / "base"
    _save_model_folder(base, tokenizer, bundle.model_dir, base_dir, dtype)
    config, weights = _read_adapter(adapter_dir)
    config.update({"trainable_token_indices": None, "modules_to_save": None})
    config["base_model_name_or_path"] = str(base_dir)
    target = bundle.export_dir / "multi" / "adapters" / name
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in weights.items() if ".lora_" in k}, str(tmp / ADAPTER_WEIGHTS))
    return base_dir, target


def export_trained(bundle: Bundle, cfg: ExportConfig) -> dict[str, str]:
    """The sequence recipe's full model (`BUNDLE/trained/`) as `BUNDLE/export/`; it has no LoRA, so no multi/ layout."""
    from tokenizer_ext import load_extended

    trained = bundle.require("trained")
    model, tokenizer, _ = load_extended(trained)
    _save_model_folder(model, tokenizer, trained, bundle.export_dir, cfg.dtype)
    outputs = {"merged": str(bundle.export_dir)}
    bundle.record_stage("export", config=cfg, inputs={"trained": trained}, outputs=outputs)
    return outputs


def export_bundle(bundle: Bundle | str | Path, config: ExportConfig | None = None) -> dict[str, str]:
    """`chatrec export`: the merged folder and/or the multi-adapter layout; records stage "export"."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    cfg = config or ExportConfig()
    bundle.require("model")
    if ((bundle.stage("finetune") or {}).get("counts") or {}).get("recipe") == "sequence":
        return export_trained(bundle, cfg)
    bundle.require("adapter")
    outputs: dict[str, str] = {}
    if cfg.merged:
        outputs["merged"] = str(export_merged(bundle, cfg.dtype))
    if cfg.multi_adapter:
        base_dir, adapter = export_multi(bundle, cfg.adapter_name, cfg.dtype)
        outputs.update({"multi_base": str(base_dir), "multi_adapter": str(adapter)})
    bundle.record_stage("export", config=cfg, inputs={"model": bundle.model_dir, "adapter": bundle.adapter_dir},
                        outputs=outputs)
    return outputs
