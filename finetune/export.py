"""`chatrec export --bundle B`: serveable model folders from the finetuned bundle.

Two layouts, both with `chatrec_tokens.json` and `trie.npz` beside the weights:

    export/                     merged: the trained model of `BUNDLE/trained/` (with `--lora`, the
                                adapters are already folded into the linear layers and the trained
                                new-token rows are in the embedding); a plain HF folder,
                                `vllm serve export/` or `--model export/`
    export/multi/base/          (`--lora` runs) the extended model at the trained depth with the
                                trained new-token rows written in, no LoRA
    export/multi/adapters/NAME/ (`--lora` runs) the LoRA adapter on the transformer layers only (no
                                trainable tokens, no modules_to_save): `--enable-lora --lora-modules NAME=...`

vLLM 0.32 refuses adapters whose `modules_to_save` hold `embed_tokens`/`lm_head` and LoRA on
embeddings, so the new-token rows live in the base weights for the multi-adapter layout; one base
then serves several adapters (A/B tests, one adapter per surface) trained from the same rows.
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
SIDECAR_FILES = ("chatrec_tokens.json", "trie.npz", "event_bias.npy")  # the last: `--reading events` only


@dataclass
class ExportConfig:
    """What `chatrec export` writes."""

    merged: bool = field(default=True, metadata={"help": "Write the merged standalone model into BUNDLE/export/."})
    multi_adapter: bool = field(default=True, metadata={"help": "For a `--lora` run, also write export/multi/ (base with trained rows + LoRA-only adapter)."})
    adapter_name: str = field(default="chatrec", metadata={"help": "Name of the LoRA-only adapter folder under export/multi/adapters/."})
    dtype: str = field(default="float32", metadata={"help": "Saved weight dtype: float32, bfloat16 or float16."})

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"`dtype` must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not self.adapter_name or "/" in self.adapter_name:
            raise ConfigError(f"`adapter_name` must be a plain folder name, got {self.adapter_name!r}")
        if not (self.merged or self.multi_adapter):
            raise ConfigError("nothing to export: set `merged` or `multi_adapter`")


def _save_model_folder(model: Any, tokenizer: Any, source_dir: Path, target: Path, dtype: str) -> None:
    import torch

    with atomic_path(target) as tmp:
        model.to(getattr(torch, dtype)).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name in SIDECAR_FILES:
            if (source_dir / name).exists():
                shutil.copy2(source_dir / name, tmp / name)


def export_multi(bundle: Bundle, layers: int, name: str = "chatrec", dtype: str = "float32") -> tuple[Path, Path]:
    """`export/multi/base/` (the extended model at the trained depth with the trained rows written in) and
    `export/multi/adapters/NAME/` (the LoRA adapter of `BUNDLE/adapter/`, pointed at that base)."""
    import torch
    from safetensors.torch import load_file, save_file

    from tokenizer_ext import load_extended

    adapter_dir = bundle.require("adapter")
    if not (adapter_dir / ADAPTER_CONFIG).exists():
        raise BundleError(f"{adapter_dir} holds no peft adapter; run `chatrec finetune --lora` first")
    base, tokenizer, token_map = load_extended(bundle.require("model"), num_layers=layers)
    trained, _, _ = load_extended(bundle.require("trained"))
    first = min(token_map.all_ids())
    with torch.no_grad():  # LoRA never touches the embedding: the trained rows are the only other change
        base.get_input_embeddings().weight[first:] = trained.get_input_embeddings().weight[first:]
    base_dir = bundle.export_dir / "multi" / "base"
    _save_model_folder(base, tokenizer, bundle.model_dir, base_dir, dtype)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    config.update({"base_model_name_or_path": str(base_dir), "trainable_token_indices": None,
                   "modules_to_save": None})
    weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    target = bundle.export_dir / "multi" / "adapters" / name
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in weights.items()}, str(tmp / ADAPTER_WEIGHTS))
    return base_dir, target


def export_bundle(bundle: Bundle | str | Path, config: ExportConfig | None = None) -> dict[str, str]:
    """`chatrec export`: `BUNDLE/trained/` (LoRA already merged) as `BUNDLE/export/`, and for a LoRA run
    the multi-adapter layout under `export/multi/`; records stage "export"."""
    from tokenizer_ext import load_extended

    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    cfg = config or ExportConfig()
    bundle.require("model")
    counts = (bundle.stage("finetune") or {}).get("counts") or {}
    if counts.get("recipe") != "sequence":
        raise BundleError(f"{bundle.root} was finetuned by the retired conversation-only LoRA recipe; finetune it "
                          f"again with `chatrec finetune --bundle {bundle.root} [--lora]`")
    trained = bundle.require("trained")
    outputs: dict[str, str] = {}
    if cfg.merged:
        model, tokenizer, _ = load_extended(trained)
        keep_multi = bundle.export_dir / "multi"
        stash = bundle.path(".export-multi-keep") if keep_multi.exists() and not cfg.multi_adapter else None
        if stash is not None:  # the merged folder replaces export/ whole; carry an earlier multi/ over
            shutil.rmtree(stash, ignore_errors=True)
            shutil.move(str(keep_multi), stash)
        try:
            _save_model_folder(model, tokenizer, trained, bundle.export_dir, cfg.dtype)
        finally:
            if stash is not None:
                shutil.move(str(stash), bundle.export_dir / "multi")
        outputs["merged"] = str(bundle.export_dir)
    if cfg.multi_adapter and counts.get("lora"):
        base_dir, adapter = export_multi(bundle, int(counts["layers"]), cfg.adapter_name, cfg.dtype)
        outputs.update({"multi_base": str(base_dir), "multi_adapter": str(adapter)})
    inputs = {"trained": trained, **({"adapter": bundle.adapter_dir} if counts.get("lora") else {})}
    bundle.record_stage("export", config=cfg, inputs=inputs, outputs=outputs)
    return outputs
