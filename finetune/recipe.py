"""The LoRA recipe (`chatrec finetune --bundle B`): a plain training loop on `accelerate`.

Model: peft LoRA on every attention and MLP projection (`q,k,v,o,gate,up,down_proj`), plus the
rows of the tokens `chatrec tokenizer extend` added (SID codes, actions, span markers). The new
rows are trained with peft's `trainable_token_indices` rather than `modules_to_save` on
`embed_tokens`/`lm_head`: it trains only those rows (a few hundred x hidden, not the full
vocabulary x hidden), handles tied embeddings (SmolLM2 ties `lm_head` to `embed_tokens`; for untied
models the same indices are given for both modules), saves only those rows in the adapter, and
`merge_and_unload` writes them into the weights. It also keeps the adapter free of
`modules_to_save`, which vLLM refuses (see `finetune.export`).

Loop: one `Accelerator` (CPU, one GPU, or `accelerate launch` over several with DDP); the data
order is a pure function of (seed, global step): epoch e visits a `default_rng(seed + e)`
permutation of the training rows, and optimizer step s consumes a fixed slice of that stream, so
`--resume` from a checkpoint replays exactly the order an uninterrupted run would have seen.
Checkpoints (`checkpoints/step-NNNNNN/`, written atomically) hold the trainable weights, optimizer,
scheduler and RNG states. Progress shows loss and tokens/s; every `eval_every` steps the
validation users are scored with constrained top-K retrieval (HR@K, NDCG@K). The loss log is
`checkpoints/train_log.jsonl` (one JSON object per step or evaluation).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatrec.bundle import Bundle, atomic_path
from chatrec.conversation import ConversationError, RenderedConversation, render_conversation
from chatrec.errors import BundleError, ConfigError, DataError
from finetune.data import TASKS, read_jsonl

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"


@dataclass
class FinetuneConfig:
    """LoRA finetuning of a bundle's extended model on its training conversations."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank (>= 1)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: tuple[str, ...] = field(default=LORA_TARGETS, metadata={"help": "Linear layers that get LoRA (attention + MLP projections)."})
    train_new_tokens: bool = field(default=True, metadata={"help": "Train the rows of the added SID/action/span tokens (peft trainable_token_indices)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (> 0)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (>= 0)."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up steps, then cosine decay to 10%."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training rows (ignored when max_steps is set)."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps to run (overrides epochs)."})
    batch_size: int = field(default=8, metadata={"help": "Conversations per micro-batch per process."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_tokens: int = field(default=512, metadata={"help": "Conversations are cut to this many tokens."})
    tasks: tuple[str, ...] | None = field(default=None, metadata={"help": "Train only on these tasks (None = all in train.jsonl)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows (None = all)."})
    eval_every: int = field(default=0, metadata={"help": "Validate every N steps (0 = only at the end)."})
    eval_users: int = field(default=64, metadata={"help": "Validation users scored per evaluation (0 = skip validation)."})
    eval_k: int = field(default=10, metadata={"help": "K of HR@K / NDCG@K."})
    save_every: int = field(default=50, metadata={"help": "Write a checkpoint every N steps (0 = only at the end)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Most recent checkpoints kept on disk."})
    log_every: int = field(default=1, metadata={"help": "Progress-bar refresh and log line every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA init, dropout and data order."})
    init_adapter: str | None = field(default=None, metadata={"help": "Start LoRA from this adapter folder (continual runs)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None = torch's default; 1 is fastest on an oversubscribed CPU)."})

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.tasks is not None:
            self.tasks = tuple(self.tasks)
            bad = sorted(set(self.tasks) - set(TASKS))
            if bad:
                raise ConfigError(f"`tasks` has unknown tasks {bad}; allowed: {list(TASKS)}")
        positive = ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_tokens", "eval_k", "keep_checkpoints",
                    "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "eval_users", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout}")
        if not self.learning_rate > 0:
            raise ConfigError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"`max_steps` must be >= 1 or None, got {self.max_steps}")
        if self.max_steps is None and not self.epochs > 0:
            raise ConfigError(f"`epochs` must be > 0, got {self.epochs}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"`num_threads` must be >= 1 or None, got {self.num_threads}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(f"`max_train_samples` must be >= 1 or None, got {self.max_train_samples}")


# data ----------------------------------------------------------------------------------------
def load_rendered(path: Path, tokenizer: Any, cfg: FinetuneConfig) -> tuple[list[RenderedConversation], int]:
    """Training rows rendered to ids + loss masks; returns (rows, number skipped as unusable)."""
    rows = read_jsonl(path)
    if cfg.tasks is not None:
        rows = [r for r in rows if r["task"] in cfg.tasks]
    if cfg.max_train_samples is not None:
        rows = rows[: cfg.max_train_samples]
    out, skipped = [], 0
    for row in rows:
        try:
            out.append(render_conversation(row["messages"], tokenizer, max_tokens=cfg.max_tokens))
        except ConversationError:
            skipped += 1
    if not out:
        raise DataError(f"{path}: no usable training conversation (skipped {skipped})")
    return out, skipped


def batch_indices(step: int, micro: int, n_rows: int, cfg: FinetuneConfig, world: int, rank: int) -> list[int]:
    """Row indices of micro-batch `micro` of optimizer step `step` on process `rank`: a pure function."""
    per_step = cfg.batch_size * world
    start = ((step * cfg.grad_accum) + micro) * per_step + rank * cfg.batch_size
    out = []
    for pos in range(start, start + cfg.batch_size):
        epoch, offset = divmod(pos, n_rows)
        out.append(int(_epoch_order(cfg.seed, epoch, n_rows)[offset]))
    return out


_ORDER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    key = (seed, epoch, n_rows)
    if key not in _ORDER_CACHE:
        _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = np.random.default_rng(seed + epoch).permutation(n_rows)
    return _ORDER_CACHE[key]


def collate(rows: list[RenderedConversation], pad_id: int) -> dict[str, Any]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 outside assistant tokens)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r)
        ids[b, :n] = torch.tensor(r.input_ids)
        attn[b, :n] = 1
        labels[b, :n] = torch.where(torch.tensor(r.loss_mask) == 1, torch.tensor(r.input_ids), -100)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def masked_lm_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean next-token cross-entropy over assistant tokens, computing logits only where needed.

    The vocabulary projection is the costliest part of a small model's step (49k x hidden per
    position), and the loss lives on a few answer tokens, so only the positions that predict a
    labelled token in some row of the batch go through `lm_head` (`logits_to_keep` with indices).
    """
    import torch.nn.functional as F

    labels = batch["labels"]  # [B, T]
    positions = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)  # [P] predicting t + 1
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=positions)
    logits = out.logits  # [B, P, V]
    target = labels[:, positions + 1]  # [B, P]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)


# model ---------------------------------------------------------------------------------------
def is_tied(model: Any) -> bool:
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    return bool(getattr(cfg, "tie_word_embeddings", False))


def lora_config(model: Any, new_token_ids: list[int], cfg: FinetuneConfig) -> Any:
    """The peft LoraConfig: LoRA on attention + MLP, new-token rows through trainable_token_indices."""
    from peft import LoraConfig, TaskType

    trainable: list[int] | dict[str, list[int]] | None = None
    if cfg.train_new_tokens and new_token_ids:
        trainable = list(new_token_ids) if is_tied(model) else {"embed_tokens": list(new_token_ids),
                                                                  "lm_head": list(new_token_ids)}
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), trainable_token_indices=trainable,
        task_type=TaskType.CAUSAL_LM, bias="none",
    )


def build_peft_model(model_dir: Path, cfg: FinetuneConfig) -> tuple[Any, Any, Any]:
    """(peft model, tokenizer, token_map) for training, starting from `cfg.init_adapter` when set."""
    from peft import get_peft_model

    from finetune.export import load_lora_weights, write_token_rows
    from tokenizer_ext import load_extended

    model, tokenizer, token_map = load_extended(model_dir)
    if cfg.init_adapter:
        write_token_rows(model, Path(cfg.init_adapter))  # parent's trained rows become the new starting rows
    peft_model = get_peft_model(model, lora_config(model, token_map.all_ids(), cfg))
    if cfg.init_adapter:
        load_lora_weights(peft_model, Path(cfg.init_adapter))
    return peft_model, tokenizer, token_map


# checkpoints ---------------------------------------------------------------------------------
def _checkpoint_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "state.json").exists())


def save_checkpoint(root: Path, step: int, model: Any, optimizer: Any, scheduler: Any, keep: int) -> Path:
    import torch

    target = root / f"step-{step:06d}"
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(trainable, tmp / "trainable.pt")
        # tensors and plain containers only, so resuming loads it with `weights_only=True`; the
        # Python and NumPy generator states go to state.json
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": {"torch": torch.get_rng_state()}}, tmp / "optim.pt")
        np_state: Any = np.random.get_state()
        name, keys, pos, has_gauss, gauss = np_state
        version, internal, gauss_next = random.getstate()
        (tmp / "state.json").write_text(json.dumps({
            "step": step, "rng_python": [version, list(internal), gauss_next],
            "rng_numpy": [name, keys.tolist(), pos, has_gauss, gauss]}) + "\n")
    for old in _checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> int:
    import torch

    trainable = torch.load(path / "trainable.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = [n for n in trainable if n not in params]
    if missing:
        raise BundleError(f"{path}: checkpoint does not match the model ({missing[0]} unknown); "
                          "it was written with another LoRA config")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value.to(params[name].device))
    try:
        state = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as exc:
        raise BundleError(f"{path / 'optim.pt'}: not a plain optimizer state ({exc.__class__.__name__}); "
                          "it was written by an older chatrec that pickled generator states; remove the folder "
                          "to start this run fresh") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    meta = json.loads((path / "state.json").read_text())
    version, internal, gauss_next = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = meta["rng_numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["rng"]["torch"])
    return int(meta["step"])


# the loop ------------------------------------------------------------------------------------
def total_steps(n_rows: int, cfg: FinetuneConfig, world: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_rows / (cfg.batch_size * cfg.grad_accum * world)))


def _code_to_item(bundle: Bundle) -> dict[tuple[int, ...], str]:
    import pandas as pd

    sids = pd.read_parquet(bundle.require("sids.parquet"), columns=["item_id", "codes"])
    return {tuple(int(c) for c in cs): str(i) for i, cs in zip(sids["item_id"], sids["codes"], strict=True)}


def validation_rows(bundle: Bundle, split: str, n: int | None) -> list[dict[str, Any]]:
    """The first `n` next-item rows of a split (deterministic subset of users)."""
    rows = [r for r in read_jsonl(bundle.train_dir / f"{split}.jsonl") if r["task"] == "next_item"]
    rows.sort(key=lambda r: r["user_id"])
    return rows if n is None else rows[:n]


def evaluate(model: Any, tokenizer: Any, token_map: Any, bundle: Bundle, rows: list[dict[str, Any]], k: int,
             exclude_history: bool = True) -> dict[str, float]:
    from chatrec.trie import ItemTrie
    from finetune.validation import evaluate_next_item

    trie = ItemTrie.load(bundle.model_dir / "trie.npz")
    res = evaluate_next_item(model, tokenizer, token_map.sid_begin, trie, rows, _code_to_item(bundle), k=k,
                             exclude_history=exclude_history)
    return res.metrics()


def finetune(bundle: Bundle | str | Path, config: FinetuneConfig | None = None, *, resume: bool = False,
             quiet: bool = False) -> dict[str, Any]:
    """Train the LoRA adapter of `bundle` into `BUNDLE/adapter/`; returns the stage's counts."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    cfg = config or FinetuneConfig()
    model_dir = bundle.require("model")
    train_path = bundle.require("train") / "train.jsonl"
    if not train_path.exists():
        raise BundleError(f"{train_path} does not exist; run `chatrec data build --bundle {bundle.root}` first")
    ckpt_root = bundle.path(CHECKPOINTS)
    if not resume and _checkpoint_dirs(ckpt_root):
        raise BundleError(f"{ckpt_root} holds checkpoints of an earlier run; pass --resume to continue it "
                          "or delete the folder to start over")

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_with_min_lr_schedule_with_warmup


    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    accelerator = Accelerator()
    set_seed(cfg.seed)
    model, tokenizer, token_map = build_peft_model(model_dir, cfg)
    rows, skipped = load_rendered(train_path, tokenizer, cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    steps = total_steps(len(rows), cfg, world)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, min(cfg.warmup_steps, steps), steps,
                                                            min_lr_rate=0.1)
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler steps once per optimizer step
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    start = 0
    log_path = ckpt_root / TRAIN_LOG
    if resume and _checkpoint_dirs(ckpt_root):
        last = _checkpoint_dirs(ckpt_root)[-1]
        start = load_checkpoint(last, accelerator.unwrap_model(model), optimizer, scheduler)
        _truncate_log(log_path, start)
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    valid = validation_rows(bundle, "valid", cfg.eval_users) if cfg.eval_users else []

    def log(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def run_eval(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if valid and accelerator.is_main_process:
            metrics = evaluate(accelerator.unwrap_model(model), tokenizer, token_map, bundle, valid, cfg.eval_k)
            log({"step": step, "eval": metrics})
        accelerator.wait_for_everyone()
        return metrics

    bar = tqdm(total=steps, initial=start, desc="finetune", disable=quiet or not accelerator.is_main_process)
    t_start, tokens_seen, last_loss, eval_metrics = time.perf_counter(), 0, float("nan"), {}
    first_loss: float | None = None
    for step in range(start, steps):
        t0 = time.perf_counter()
        losses, n_tokens, sample_ids = [], 0, []
        for micro in range(cfg.grad_accum):
            idx = batch_indices(step, micro, len(rows), cfg, world, rank)
            sample_ids += idx
            batch = {k: v.to(accelerator.device) for k, v in collate([rows[i] for i in idx], pad_id).items()}
            sync = accelerator.no_sync(model) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()
            with sync:
                loss = masked_lm_loss(model, batch)
                accelerator.backward(loss / cfg.grad_accum)
            losses.append(float(loss.detach()))
            n_tokens += int(batch["attention_mask"].sum())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        last_loss = float(np.mean(losses))
        first_loss = last_loss if first_loss is None else first_loss
        dt = time.perf_counter() - t0
        tokens_seen += n_tokens * world
        tok_s = n_tokens * world / dt if dt > 0 else 0.0
        log({"step": step + 1, "loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens": n_tokens * world,
             "tok_s": tok_s, "elapsed_s": time.perf_counter() - t_start, "samples": sample_ids})
        bar.update(1)
        if (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tok_s:.0f}")
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < steps:
            eval_metrics = run_eval(done)
        if cfg.save_every and done % cfg.save_every == 0 and done < steps and accelerator.is_main_process:
            save_checkpoint(ckpt_root, done, accelerator.unwrap_model(model), optimizer, scheduler,
                            cfg.keep_checkpoints)
    bar.close()
    elapsed = time.perf_counter() - t_start
    if accelerator.is_main_process:
        save_checkpoint(ckpt_root, steps, accelerator.unwrap_model(model), optimizer, scheduler, cfg.keep_checkpoints)
        save_adapter(accelerator.unwrap_model(model), bundle)
    eval_metrics = run_eval(steps) or eval_metrics
    counts: dict[str, Any] = {
        "train_rows": len(rows), "skipped_rows": skipped, "steps": steps, "resumed_from": start,
        "first_loss": first_loss if first_loss is not None else float("nan"), "final_loss": last_loss,
        "tokens": tokens_seen, "tokens_per_s": tokens_seen / elapsed if elapsed > 0 else 0.0,
        "peak_rss_mb": peak_memory_mb(), "processes": world,
        **{f"valid_{k}": v for k, v in eval_metrics.items()},
    }
    if accelerator.is_main_process:
        bundle.record_stage("finetune", config=cfg, inputs={"train.jsonl": train_path, "model": model_dir},
                            outputs={"adapter": bundle.adapter_dir, "log": log_path}, counts=counts,
                            extra={"parent": _parent_of(bundle)})
    accelerator.wait_for_everyone()
    return counts


def save_adapter(model: Any, bundle: Bundle) -> Path:
    """`model.save_pretrained` into `BUNDLE/adapter/` atomically."""
    with atomic_path(bundle.adapter_dir) as tmp:
        model.save_pretrained(str(tmp))
    return bundle.adapter_dir


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak CUDA allocation when on GPU, in MiB."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:  # pragma: no cover
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after checkpoint `step` (they will be written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _parent_of(bundle: Bundle) -> str | None:
    rec = bundle.stage("continual")
    return None if rec is None else rec.get("parent")


def read_log(bundle: Bundle | str | Path) -> Iterator[dict[str, Any]]:
    """The training log's records (loss per step, evaluations)."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    path = bundle.path(CHECKPOINTS, TRAIN_LOG)
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)
