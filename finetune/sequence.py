"""The sequence recipe (`chatrec finetune`, the default): every next token of a user's sequence is a target.

A training row is a window of one user's history in the compact event format of
`chatrec.prompts` (`ACTION CODES ACTION CODES ...`, written by `chatrec data build` into
`train/sequences.jsonl`), and the loss falls on every token of it: each code token trains next-item
retrieval, each action token next-action prediction, all in one forward/backward pass. A share of
the steps (`chat_share`) trains on the chat conversations of `train.jsonl` instead, so the model
keeps writing text and answering text requests.

What makes it fast on a CPU (measured in BENCHMARKS.md, "Sequence recipe"):
- only the first `keep_layers` decoder layers are kept (most intermediate layers of a small LLM are
  redundant for sequential recommendation, SLMRec arXiv 2405.17890); the served model is that
  shallower model;
- on sequence steps the output head is computed only over the rows of the added tokens (codes,
  actions, span markers): a few hundred rows instead of the 49k-row vocabulary; retrieval
  renormalises over the trie's children, so the same restricted distribution is what serving ranks;
- bf16 autocast where the CPU has native bf16 (AVX512_BF16 / AMX), fp32 elsewhere;
- the added-token rows are one small parameter of their own (the base embedding stays frozen), so
  the optimizer holds no state for the 49k frozen rows.

Stages: the first `rows_steps` steps train the new rows alone at `rows_learning_rate` over the frozen
trunk, then the kept layers are trained too (full finetuning of a shallow model costs about what
LoRA on it costs, and learns faster per minute). The learning rate follows a cosine over the planned
run (`max_minutes` or `epochs`); with `average_from` > 0, a running mean of the trained weights over
the run's tail is the model served (the last step's weights stay in `checkpoints/seq-last/`).
Snapshots at `save_minutes` are serveable model folders under
`checkpoints/seq-XXXmin/` (for learning curves); the final model goes to `BUNDLE/trained/`, which
`chatrec export` turns into `BUNDLE/export/`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatrec.bundle import Bundle
from chatrec.errors import BundleError, ConfigError, DataError
from finetune.data import read_jsonl

TRAINED = "trained"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
LAST = "seq-last"  # snapshot of the last step's weights when the served model is a tail average


@dataclass
class SequenceConfig:
    """The sequence recipe: full finetuning of a shallow copy of the model on user sequences."""

    keep_layers: int | None = field(default=8, metadata={"help": "Decoder layers kept from the bottom (None = all)."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate of the kept layers."})
    rows_learning_rate: float = field(default=5e-3, metadata={"help": "Peak learning rate of the added-token rows."})
    rows_steps: int = field(default=30, metadata={"help": "First steps that train the added rows alone (trunk frozen)."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps, then cosine decay to 10%."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the kept layers."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the input embeddings and the final hidden states "
                                                          "while training, in [0, 1)."})
    attention_dropout: float = field(default=0.0, metadata={"help": "Dropout on the attention weights while training, "
                                                                    "in [0, 1) (on CPU it leaves the fused attention "
                                                                    "kernel: about 20% fewer tokens/s in one run)."})
    batch_size: int = field(default=16, metadata={"help": "Sequence windows per step."})
    micro_batch_size: int | None = field(default=None, metadata={"help": "Windows per forward/backward pass "
                                         "(gradients accumulate over the batch; smaller needs less activation memory, "
                                         "same update). None = the whole batch."})
    chat_share: float = field(default=0.1, metadata={"help": "Share of steps that train on chat conversations (train.jsonl), in [0, 1)."})
    chat_batch_size: int = field(default=4, metadata={"help": "Conversations per chat step."})
    chat_max_tokens: int = field(default=384, metadata={"help": "Chat conversations are cut to this many tokens."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the sequence windows (ignored when max_steps or max_minutes is set)."})
    max_steps: int | None = field(default=None, metadata={"help": "Steps to run (overrides epochs)."})
    max_minutes: float | None = field(default=None, metadata={"help": "Wall-clock training budget in minutes (overrides epochs; the schedule follows the clock)."})
    save_minutes: tuple[float, ...] = field(default=(), metadata={"help": "Elapsed minutes at which to write a serveable snapshot (learning curves)."})
    eval_users: int = field(default=200, metadata={"help": "Validation users scored at the end (0 = skip)."})
    eval_k: int = field(default=10, metadata={"help": "K of HR@K / NDCG@K in validation."})
    bf16: str = field(default="auto", metadata={"help": "bf16 autocast: auto (when the CPU or GPU supports it), on, off."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None = torch's default)."})
    average_from: float = field(default=0.0, metadata={"help": "Serve the mean of the weights after every step from "
                                "this share of the run on (tail weight averaging, as SWA/LAWA), in [0, 1), and keep "
                                "the last step's weights as the snapshot `seq-last`; 0 (the default) = serve the last "
                                "step's weights (0.5 lost 0.003 NDCG@10 in one 100-minute run, BENCHMARKS.md)."})
    trim_above_mb: float = field(default=0.0, metadata={"help": "Also return freed heap memory to the OS (glibc) after "
                                 "every step that ends above this many MiB, so peak RSS stays near it; 0 = only every "
                                 "50 steps (the default: at 2,560 a 100-minute run peaked 0.5 GiB lower but trained "
                                 "17% fewer tokens per second, BENCHMARKS.md)."})
    head_rows_multiple: int = field(default=256, metadata={"help": "Pad the supervised positions to a multiple of "
                                    "this many rows before the output head (64 at most for chat steps, whose head is "
                                    "the whole vocabulary), so its matmul sees few shapes; 0 = no padding (resident "
                                    "memory then crept 0.6 GiB in 6 minutes, BENCHMARKS.md)."})
    seed: int = field(default=0, metadata={"help": "Seed for data order and chat-step choice."})
    init_model: str | None = field(default=None, metadata={"help": "Start from this trained model folder (continual runs)."})

    def __post_init__(self) -> None:
        self.save_minutes = tuple(float(m) for m in self.save_minutes)
        problems = []
        if self.keep_layers is not None and self.keep_layers < 1:
            problems.append(f"`keep_layers` must be >= 1 or None, got {self.keep_layers}")
        for name in ("learning_rate", "rows_learning_rate"):
            if not getattr(self, name) > 0:
                problems.append(f"`{name}` must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "chat_batch_size", "chat_max_tokens", "eval_k"):
            if getattr(self, name) < 1:
                problems.append(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            problems.append(f"`micro_batch_size` must be >= 1 or None, got {self.micro_batch_size}")
        for name in ("rows_steps", "warmup_steps", "eval_users"):
            if getattr(self, name) < 0:
                problems.append(f"`{name}` must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"`{name}` must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.average_from < 1.0:
            problems.append(f"`average_from` must be in [0, 1), got {self.average_from}")
        if self.weight_decay < 0:
            problems.append(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.chat_share < 1.0:
            problems.append(f"`chat_share` must be in [0, 1), got {self.chat_share}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"`max_steps` must be >= 1 or None, got {self.max_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            problems.append(f"`max_minutes` must be > 0 or None, got {self.max_minutes}")
        if self.max_steps is None and self.max_minutes is None and not self.epochs > 0:
            problems.append(f"`epochs` must be > 0, got {self.epochs}")
        if self.bf16 not in ("auto", "on", "off"):
            problems.append(f"`bf16` must be auto, on or off, got {self.bf16!r}")
        if self.head_rows_multiple < 0:
            problems.append(f"`head_rows_multiple` must be >= 0, got {self.head_rows_multiple}")
        if self.trim_above_mb < 0:
            problems.append(f"`trim_above_mb` must be >= 0, got {self.trim_above_mb}")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"`num_threads` must be >= 1 or None, got {self.num_threads}")
        if problems:
            raise ConfigError("; ".join(problems))


# hardware -------------------------------------------------------------------------------------
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512_BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: str, device: str) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


# data -----------------------------------------------------------------------------------------
def tokenize_windows(rows: Sequence[dict[str, Any]], tokenizer: Any, new_ids: set[int], where: str) -> list[list[int]]:
    """Token ids of each window's text; every id must be an added token (the compact format has no text)."""
    out = []
    for line, row in enumerate(rows, start=1):
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        stray = [i for i in ids if i not in new_ids]
        if stray:
            raise DataError(f"{where}:{line}: text: token {tokenizer.convert_ids_to_tokens(stray[0])!r} is not an "
                            "added SID/action token; rebuild with `chatrec data build` after `chatrec tokenizer extend`")
        if len(ids) >= 2:
            out.append(ids)
    return out


def truncate_layers(model: Any, keep: int | None) -> int:
    """Keep the bottom `keep` decoder layers of a HF decoder-only model; returns the layer count kept."""
    layers = model.model.layers
    if keep is None or keep >= len(layers):
        return len(layers)
    model.model.layers = layers[:keep]
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:keep]
    return keep


class RowsModel:
    """A causal LM whose added-token rows are one trainable parameter beside the frozen base rows.

    Inputs are embedded from `[base rows; new rows]`; `hidden()` returns the final-norm hidden
    states; `logits(h, full)` projects them on the new rows only or on the whole (tied) vocabulary.
    Requires the added tokens to be the last ids of the vocabulary (as `tokenizer extend` makes them).
    """

    def __init__(self, model: Any, first_new_id: int, dropout: float = 0.0, attention_dropout: float = 0.0):
        import torch

        self.model = model
        self.first = first_new_id
        self.dropout = dropout  # SASRec-style regularisation of the embeddings and the output states
        for layer in getattr(model.model, "layers", ()):
            if hasattr(layer.self_attn, "attention_dropout"):  # Llama-family attention reads it when training
                layer.self_attn.attention_dropout = attention_dropout
        emb = model.get_input_embeddings().weight  # [V, H]
        self.base_rows = emb[:first_new_id].detach()
        self.new_rows = torch.nn.Parameter(emb[first_new_id:].detach().clone())  # [N, H]
        self.base_rows.requires_grad_(False)
        for p in model.parameters():
            p.requires_grad_(False)
        self.trunk = [p for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n]
        self.tied = model.get_output_embeddings() is None or (
            model.get_output_embeddings().weight.data_ptr() == emb.data_ptr())
        if not self.tied:
            raise ConfigError("the sequence recipe needs a model with tied input/output embeddings (as SmolLM2); "
                              "use `--recipe lora` for this model")

    def embed(self, ids: Any) -> Any:
        import torch

        is_new = ids >= self.first
        base = torch.nn.functional.embedding(torch.where(is_new, 0, ids), self.base_rows)
        new = torch.nn.functional.embedding(torch.where(is_new, ids - self.first, 0), self.new_rows)
        return torch.where(is_new.unsqueeze(-1), new, base)  # [B, T, H]

    def hidden(self, ids: Any, attention_mask: Any) -> Any:
        import torch.nn.functional as F

        training = self.model.training and self.dropout > 0
        x = F.dropout(self.embed(ids), self.dropout, training)
        out = self.model.model(inputs_embeds=x, attention_mask=attention_mask)
        return F.dropout(out.last_hidden_state, self.dropout, training)  # [B, T, H]

    def logits(self, h: Any, full: bool) -> Any:
        import torch

        if not full:
            return h @ self.new_rows.T  # [P, N]
        return torch.cat([h @ self.base_rows.T, h @ self.new_rows.T], dim=-1)  # [P, V]

    def write_back(self) -> Any:
        """The model with the trained rows written into its (tied) embedding."""
        import torch

        with torch.no_grad():
            self.model.get_input_embeddings().weight[self.first:] = self.new_rows.detach()
        return self.model


TRIM_EVERY = 50  # steps between returns of freed heap memory to the OS (and whenever RSS passes `trim_above_mb`)


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc `malloc_trim`): varying batch shapes leave holes in
    the heap that plain `free` keeps resident, so RSS creeps up over a long run. No-op off glibc."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux; NaN elsewhere), logged per step to profile growth."""
    try:
        with open("/proc/self/statm") as fh:
            return round(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return float("nan")


def padded_width(n: int, multiple: int = 64) -> int:
    """Batch width rounded up, so a run sees a few distinct shapes (CPU kernel caches and the allocator
    grow with every new shape: a 50-minute run without it crept from 2.7 to 4.9 GiB resident)."""
    return -(-n // multiple) * multiple


def right_padded(rows: Sequence[Sequence[int]], pad: int, device: str) -> tuple[Any, Any]:
    """Rows right-padded to `padded_width` with `pad`: (values [B, T], attention mask [B, T])."""
    import torch

    width = padded_width(max(len(r) for r in rows))
    values = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        values[b, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        attn[b, :len(r)] = 1
    return values.to(device), attn.to(device)


def padded_targets(pred: Any, target: Any, multiple: int = 256) -> tuple[Any, Any]:
    """Supervised positions [P, H] and targets [P] padded to a multiple of `multiple` rows (zero
    states, targets ignored by the loss, so the mean loss and its gradient are unchanged). P differs
    every step; with a new row count per step the head's matmul took a new shape each time and
    resident memory crept up 0.6 GiB in 6 minutes (flat with padding; BENCHMARKS.md, Memory)."""
    import torch.nn.functional as F

    extra = padded_width(int(pred.shape[0]), multiple) - int(pred.shape[0]) if multiple else 0
    if not extra:
        return pred, target
    return F.pad(pred, (0, 0, 0, extra)), F.pad(target, (0, extra), value=-100)


def sequence_loss(rm: RowsModel, windows: Sequence[Sequence[int]], pad_id: int, device: str,
                  head_rows_multiple: int = 256) -> tuple[Any, int]:
    """Mean cross-entropy of every next token of every window, over the added-token rows; (loss, targets)."""
    import torch.nn.functional as F

    ids, attn = right_padded(windows, pad_id, device)
    h = rm.hidden(ids, attn)  # [B, T, H]
    keep = attn[:, 1:].bool()  # position t predicts t + 1
    target = ids[:, 1:][keep] - rm.first  # [P] index into the new rows
    pred, padded = padded_targets(h[:, :-1][keep], target, head_rows_multiple)  # [P', H], P' >= P
    logits = rm.logits(pred, full=False).float()  # [P', N]
    return F.cross_entropy(logits, padded), int(target.numel())


def sequence_backward(rm: RowsModel, windows: Sequence[Sequence[int]], pad_id: int, device: str,
                      micro_batch_size: int | None = None, autocast: Any = None,
                      head_rows_multiple: int = 256) -> tuple[Any, int]:
    """`sequence_loss` of `windows`, back-propagated in micro-batches of `micro_batch_size` windows:
    each part weighted by its share of the targets, so the gradient is the whole batch's (less
    activation memory at once). Returns (the batch's mean loss, detached; targets)."""
    import contextlib

    import torch

    n_targets = sum(len(w) - 1 for w in windows)
    size = micro_batch_size or len(windows)
    total = torch.zeros(())
    for i in range(0, len(windows), size):
        with autocast if autocast is not None else contextlib.nullcontext():
            part_loss, part_targets = sequence_loss(rm, windows[i:i + size], pad_id, device, head_rows_multiple)
        (part_loss * (part_targets / n_targets)).backward()
        total = total + part_loss.detach().float().cpu() * (part_targets / n_targets)
    return total, n_targets


def chat_loss(rm: RowsModel, rows: Sequence[Any], pad_id: int, device: str,
              head_rows_multiple: int = 64) -> tuple[Any, int]:
    """Cross-entropy over the full vocabulary at the assistant tokens of rendered conversations."""
    import torch.nn.functional as F

    ids, attn = right_padded([r.input_ids for r in rows], pad_id, device)
    mask, _ = right_padded([r.loss_mask for r in rows], 0, device)
    mask = mask.bool()
    h = rm.hidden(ids, attn)
    keep = mask[:, 1:]
    target = ids[:, 1:][keep]
    pred, padded = padded_targets(h[:, :-1][keep], target, head_rows_multiple)
    logits = rm.logits(pred, full=True).float()
    return F.cross_entropy(logits, padded), int(target.numel())


class JsonlIndex:
    """Random access to the rows of a JSONL file by line offsets (100k conversations held as objects cost GBs)."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets: list[int] = []
        with path.open("rb") as fh:
            pos = 0
            for line in fh:
                if line.strip():
                    self.offsets.append(pos)
                pos += len(line)
        self._fh = path.open("rb")

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._fh.seek(self.offsets[i])
        return dict(json.loads(self._fh.readline()))


# the loop -------------------------------------------------------------------------------------
def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to 0.1 over `progress` in [0, 1]."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def window_order(n: int, seed: int) -> Iterator[int]:
    """An endless stream of window indices, a fresh seeded permutation each epoch."""
    epoch = 0
    while True:
        yield from np.random.default_rng(seed + epoch).permutation(n).tolist()
        epoch += 1


def save_model_folder(model: Any, tokenizer: Any, source_dir: Path, target: Path) -> Path:
    """A serveable HF folder (weights, tokenizer, chatrec_tokens.json, trie.npz), written atomically."""
    from finetune.export import _save_model_folder

    _save_model_folder(model, tokenizer, source_dir, target, "float32")
    return target


def train_sequences(bundle: Bundle | str | Path, config: SequenceConfig | None = None, *,
                    quiet: bool = False) -> dict[str, Any]:
    """Train `BUNDLE/model` on the bundle's sequences (+ chat share) into `BUNDLE/trained/`; returns counts."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    cfg = config or SequenceConfig()
    model_dir = bundle.require("model")
    seq_path = bundle.require("train") / "sequences.jsonl"
    if not seq_path.exists():
        raise BundleError(f"{seq_path} does not exist (the bundle was built before sequences existed); "
                          f"run `chatrec data build --bundle {bundle.root}` again")
    source = Path(cfg.init_model) if cfg.init_model else model_dir

    import torch
    from tqdm.auto import tqdm

    from chatrec.conversation import ConversationError, render_conversation
    from tokenizer_ext import load_extended

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, token_map = load_extended(source, num_layers=cfg.keep_layers)
    new_ids = token_map.all_ids()
    first = min(new_ids)
    if new_ids != list(range(first, len(tokenizer))):
        raise BundleError(f"{source}: the added tokens are not the last ids of the vocabulary; "
                          "re-run `chatrec tokenizer extend`")
    layers = truncate_layers(model, cfg.keep_layers)
    model.to(device)
    rm = RowsModel(model, first, cfg.dropout, cfg.attention_dropout)
    rm.new_rows.data = rm.new_rows.data.to(device)
    windows = tokenize_windows(read_jsonl(seq_path), tokenizer, set(new_ids), str(seq_path))
    if not windows:
        raise DataError(f"{seq_path}: no window holds two tokens; users need at least two events")
    chat_path = bundle.train_dir / "train.jsonl"
    chat_rows = JsonlIndex(chat_path) if cfg.chat_share > 0 and chat_path.exists() else None
    if chat_rows is not None and not len(chat_rows):
        chat_rows = None
    rendered: dict[int, Any] = {}

    def chat_row(rng: random.Random) -> Any:
        """A random conversation, read and rendered on first use (rendering all up front takes minutes)."""
        assert chat_rows is not None
        while True:
            i = rng.randrange(len(chat_rows))
            if i not in rendered:
                try:
                    rendered[i] = render_conversation(chat_rows[i]["messages"], tokenizer,
                                                      max_tokens=cfg.chat_max_tokens)
                except ConversationError:
                    rendered[i] = None
            if rendered[i] is not None:
                return rendered[i]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bf16 = use_bf16(cfg.bf16, device)

    seq_steps = math.ceil(cfg.epochs * len(windows) / cfg.batch_size)
    planned = cfg.max_steps or (None if cfg.max_minutes else math.ceil(seq_steps / (1 - cfg.chat_share)))
    for p in rm.trunk:
        p.requires_grad_(cfg.rows_steps == 0)
    optimizer = torch.optim.AdamW([
        {"params": [rm.new_rows], "lr": cfg.rows_learning_rate, "weight_decay": 0.0, "peak": cfg.rows_learning_rate},
        {"params": rm.trunk, "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "peak": cfg.learning_rate},
    ])
    ckpt_root = bundle.path(CHECKPOINTS)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    ckpt_root.mkdir(parents=True)
    log_path = ckpt_root / TRAIN_LOG
    order = window_order(len(windows), cfg.seed)
    rng = random.Random(cfg.seed)
    pending_saves = sorted(cfg.save_minutes)
    snapshots: dict[str, str] = {}
    bar = tqdm(total=planned or int(cfg.max_minutes * 60 if cfg.max_minutes else 0), desc="finetune (sequence)",
               disable=quiet, unit="step" if planned else "s")
    model.train()
    t_start = time.perf_counter()
    step, targets_seen, tokens_seen, first_loss, last_loss = 0, 0, 0, float("nan"), float("nan")
    ema = float("nan")
    average = TailAverage([rm.new_rows, *rm.trunk])
    with log_path.open("w") as log:
        while True:
            elapsed = time.perf_counter() - t_start
            if planned is not None and step >= planned:
                break
            if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
                break
            if step == cfg.rows_steps and cfg.rows_steps:
                for p in rm.trunk:
                    p.requires_grad_(True)
            progress = step / planned if planned else elapsed / (cfg.max_minutes * 60)  # type: ignore[operator]
            factor = lr_factor(progress, step, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["peak"] * factor
            kind = "chat" if chat_rows is not None and rng.random() < cfg.chat_share else "sequence"
            autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
            if kind == "chat":
                batch = [chat_row(rng) for _ in range(cfg.chat_batch_size)]
                with autocast:
                    loss, n_targets = chat_loss(rm, batch, pad_id, device, min(cfg.head_rows_multiple, 64))
                loss.backward()
                n_tokens = sum(len(r) for r in batch)
            else:
                batch_w = [windows[next(order)] for _ in range(cfg.batch_size)]
                loss, n_targets = sequence_backward(rm, batch_w, pad_id, device, cfg.micro_batch_size, autocast,
                                                    cfg.head_rows_multiple)
                n_tokens = sum(len(w) for w in batch_w)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if cfg.average_from and progress >= cfg.average_from and step > cfg.rows_steps:
                average.update()
            value = float(loss.detach())
            if kind == "sequence":
                targets_seen += n_targets
                first_loss = value if math.isnan(first_loss) else first_loss
                last_loss = value
                ema = value if math.isnan(ema) else 0.95 * ema + 0.05 * value
            tokens_seen += n_tokens
            elapsed = time.perf_counter() - t_start
            rss = resident_mb()
            if step % TRIM_EVERY == 0 or (cfg.trim_above_mb and rss > cfg.trim_above_mb):
                release_free_memory()
            log.write(json.dumps({"step": step, "kind": kind, "loss": value, "lr": optimizer.param_groups[1]["lr"],
                                  "tokens": n_tokens, "targets": n_targets, "elapsed_s": round(elapsed, 2),
                                  "rss_mb": rss}) + "\n")
            log.flush()
            if planned:
                bar.update(1)
            else:
                bar.update(int(elapsed) - bar.n)
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}")
            while pending_saves and elapsed >= pending_saves[0] * 60:
                minutes = pending_saves.pop(0)
                name = f"seq-{minutes:05.1f}min"
                save_model_folder(_snapshot(rm), tokenizer, model_dir, ckpt_root / name)
                snapshots[name] = json.dumps({"minutes": minutes, "step": step})
    bar.close()
    elapsed = time.perf_counter() - t_start
    model.eval()
    if average.count:  # keep the last step's weights for comparison, then serve the mean
        save_model_folder(_snapshot(rm), tokenizer, model_dir, ckpt_root / LAST)
        snapshots[LAST] = json.dumps({"minutes": round(elapsed / 60, 2), "step": step})
        average.copy_to_params()
    trained = save_model_folder(rm.write_back(), tokenizer, model_dir, bundle.path(TRAINED))
    metrics: dict[str, float] = {}
    if cfg.eval_users:
        metrics = evaluate_sequences(rm.model, tokenizer, bundle, trained, cfg.eval_users, cfg.eval_k)
    from finetune.recipe import peak_memory_mb

    counts: dict[str, Any] = {
        "recipe": "sequence", "windows": len(windows), "chat_rows": len(chat_rows or ()), "steps": step,
        "layers": layers, "bf16": bf16, "train_minutes": round(elapsed / 60, 2),
        "first_loss": first_loss, "final_loss": last_loss, "tokens": tokens_seen,
        "tokens_per_s": tokens_seen / elapsed if elapsed > 0 else 0.0,
        "targets": targets_seen, "targets_per_s": targets_seen / elapsed if elapsed > 0 else 0.0,
        "epochs_seen": targets_seen / max(1, sum(len(w) - 1 for w in windows)),
        "averaged_steps": average.count,
        "peak_rss_mb": peak_memory_mb(), **{f"valid_{k}": v for k, v in metrics.items()},
    }
    bundle.record_stage("finetune", config=cfg, inputs={"sequences.jsonl": seq_path, "model": source},
                        outputs={"trained": trained, "log": log_path}, counts=counts,
                        extra={"snapshots": {k: json.loads(v) for k, v in sorted(snapshots.items())}})
    return counts


class TailAverage:
    """The running mean of some parameters over the steps it is updated on (tail weight averaging:
    the mean of the late iterates of one run generalises better than the last one, Izmailov et al.
    2018, SWA; Kaddour 2022, LAWA). Hand-written: torch's AveragedModel copies the whole model
    (the frozen 49k-row embedding included), this keeps only the trained tensors."""

    def __init__(self, params: Sequence[Any]):
        self.params = list(params)
        self.mean: list[Any] = []
        self.count = 0

    def update(self) -> None:
        import torch

        with torch.no_grad():
            if not self.count:
                self.mean = [p.detach().clone() for p in self.params]
            else:
                for m, p in zip(self.mean, self.params, strict=True):
                    m.lerp_(p.detach(), 1.0 / (self.count + 1))
        self.count += 1

    def copy_to_params(self) -> None:
        import torch

        with torch.no_grad():
            for m, p in zip(self.mean, self.params, strict=True):
                p.copy_(m)


def _snapshot(rm: RowsModel) -> Any:
    """The model with the current rows written in (training continues on the same tensors)."""
    was_training = rm.model.training
    rm.model.eval()
    model = rm.write_back()
    if was_training:
        model.train()
    return model


def evaluate_sequences(model: Any, tokenizer: Any, bundle: Bundle, model_dir: Path, n_users: int, k: int,
                       split: str = "valid") -> dict[str, float]:
    """HR@k / NDCG@k of the held-out next item of the first `n_users` users of `split` (history items excluded)."""
    import pandas as pd

    from chatrec import metrics as m
    from chatrec.constrained import ConstraintCore, SpanTokens
    from chatrec.retrieval import RetrievalConfig, top_k
    from chatrec.trie import ItemTrie
    from serve.engines.transformers_engine import TransformersEngine
    from tokenizer_ext import TokenMap

    path = bundle.train_dir / f"sequences_{split}.jsonl"
    if not path.exists():
        return {}
    rows = sorted(read_jsonl(path), key=lambda r: r["user_id"])[:n_users]
    if not rows:
        return {}
    trie = ItemTrie.load(model_dir / "trie.npz")
    token_map = TokenMap.load(model_dir / "chatrec_tokens.json")
    sids = pd.read_parquet(bundle.require("sids.parquet"), columns=["item_id", "codes"])
    core = ConstraintCore(trie, SpanTokens.from_token_map(token_map))
    engine = TransformersEngine.from_model(model, tokenizer, core)
    by_codes = {tuple(int(c) for c in cs): str(i) for i, cs in zip(sids["item_id"], sids["codes"], strict=True)}
    ranks = []
    import torch

    with torch.inference_mode():
        for row in rows:
            ids = tokenizer(row["text"] + f"<|act_{row['target_action']}|>", add_special_tokens=False)["input_ids"]
            seen = _items_in(ids, token_map, by_codes)
            allowed = core.allowed_items(seen)
            found = top_k(engine.next_token_logprobs, ids, trie, RetrievalConfig(k=k, beam_width=2 * k), allowed)
            ranks.append(m.target_rank([f.item_id for f in found], row["target_item_id"]))
    return {f"hr@{k}": m.hit_rate(ranks, k), f"ndcg@{k}": m.ndcg(ranks, k), "users": float(len(rows))}


def _items_in(ids: Sequence[int], token_map: Any, by_codes: dict[tuple[int, ...], str]) -> list[str]:
    """Item ids named in a compact event string's token ids."""
    code_of = {tid: (int(key.split("_")[0]), int(key.split("_")[1])) for key, tid in token_map.codes.items()}
    out: list[str] = []
    codes: list[int] = []
    for t in ids:
        if t in code_of:
            level, code = code_of[t]
            codes = [code] if level == 0 else [*codes, code]
            item = by_codes.get(tuple(codes))
            if item is not None:
                out.append(item)
    return out
