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
trunk, then the kept layers are trained too: the layers themselves (the default: full finetuning of a
shallow model), or with `lora` peft LoRA adapters on their attention and MLP projections (any depth,
the full model included; the adapter goes to `BUNDLE/adapter/`, the merged model to `trained/`). The
learning rate follows a cosine over the planned run (`max_minutes` or `epochs`); with
`average_from` > 0, a running mean of the trained weights over the run's tail is the model served (the
last step's weights stay in `checkpoints/seq-last/`). Snapshots at `save_minutes` are serveable model
folders under `checkpoints/seq-XXXmin/` (for learning curves); the final model goes to
`BUNDLE/trained/`, which `chatrec export` turns into `BUNDLE/export/`.

Scale-out: `accelerate launch -m chatrec finetune --bundle B` runs the same loop on N processes
(DDP through Accelerate; gloo on CPU, NCCL on GPUs). `batch_size` is the global batch: every process
draws the same global batch from the same seeded order and trains on its share, each share's loss is
weighted by its share of the batch's targets, and DDP's gradient all-reduce then gives exactly the
one-process gradient. The main process logs, snapshots and saves; every `checkpoint_every` steps it
writes `checkpoints/state/`, from which `--resume` continues (`finetune.train_state`).
"""

from __future__ import annotations

import contextlib
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

from chatrec.bundle import Bundle, atomic_path
from chatrec.errors import BundleError, ConfigError, DataError
from finetune.data import read_jsonl
from finetune.train_state import Progress, TailAverage, load_state, save_state, truncate_log

TRAINED = "trained"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
LAST = "seq-last"  # snapshot of the last step's weights when the served model is a tail average
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
READINGS = ("tokens", "events")
EVENTS_DROPOUT = 0.2  # the events reading's: chosen on ML-1M validation users (0 / 0.2: 0.1174 / 0.1249 at 20 min)
# the events reading's tail average: the second half, chosen on ML-1M validation users (seed 0, the same run's last
# step 0.1379 -> its tail's mean 0.1421)
EVENTS_AVERAGE_FROM = 0.5
KEEP_LAYERS = 2  # decoder layers kept, the demo's and `chatrec finetune`'s (chosen on validation, BENCHMARKS.md)
LEARNING_RATE = 5e-4  # peak learning rate of the kept layers (full finetune)
LORA_LEARNING_RATE = 2e-3  # peak learning rate of the LoRA matrices


@dataclass
class SequenceConfig:
    """The sequence recipe: finetuning of a (shallow) copy of the model on user sequences, the kept
    layers themselves or, with `lora`, peft LoRA adapters on them."""

    reading: str = field(default="tokens", metadata={"help": "How the trunk reads a history: tokens (each event as "
                         "`ACTION s0 s1 s2`, every next token a target, with the chat share: the default) or events "
                         "(one position per event, one softmax over the catalog, served as one token per (action, "
                         "item); 1.5 x tokens at equal CPU on ML-1M validation, no chat steps or LoRA yet; "
                         "finetune/events.py)."})
    events_max_len: int = field(default=200, metadata={"help": "events: events a training window and the served "
                                "prompt hold (SASRec's ML-1M setting)."})
    events_item_input: bool = field(default=True, metadata={"help": "events: an event's input row also holds its "
                                    "item's own residual (the input and output item vectors tied, as in SASRec), "
                                    "not only its SID code rows; chosen on ML-1M validation (1.06 x without, one seed)."})
    events_item_bias: bool = field(default=True, metadata={"help": "events: a trained per-item bias in the "
                                   "softmax (as BERT4Rec's output layer), served in the event bias; on in the recipe "
                                   "chosen on ML-1M validation with the tail average (BENCHMARKS.md)."})
    events_popularity: float | None = field(default=None, metadata={"help": "events: weight of log(1 + an item's "
                                            "training events) in its served score (None = chosen on the validation "
                                            "users among 0-0.6 at the end of training; 0 = none)."})
    keep_layers: int | None = field(default=KEEP_LAYERS, metadata={
        "help": f"Decoder layers kept from the bottom (None = all); {KEEP_LAYERS} = the demo's, chosen on validation users."})
    learning_rate: float | None = field(default=None, metadata={"help": "Peak AdamW learning rate of the kept layers "
                                        f"(None = {LEARNING_RATE:g}, or {LORA_LEARNING_RATE:g} for the LoRA matrices "
                                        "with `lora`)."})
    lora: bool = field(default=False, metadata={"help": "Train peft LoRA adapters on the kept layers' attention and "
                       "MLP projections (the layers stay frozen) instead of the layers; the added-token rows are "
                       "trained either way. `chatrec export` merges them and also writes base + adapter."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (with `lora`)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS, metadata={"help": "Linear layers (module names) "
                                          "that get LoRA adapters."})
    rows_learning_rate: float = field(default=5e-3, metadata={"help": "Peak learning rate of the added-token rows."})
    rows_steps: int = field(default=30, metadata={"help": "First steps that train the added rows alone (trunk frozen)."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps, then cosine decay to 10%."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the kept layers."})
    rows_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the added-token rows "
                                     "(and, with reading events, the item vectors and action shifts)."})
    dropout: float | None = field(default=None, metadata={"help": "Dropout on the input embeddings and the final "
                                  "hidden states while training, in [0, 1) (None = 0 for tokens, 0.2 for events: "
                                  "each chosen on validation users)."})
    attention_dropout: float = field(default=0.0, metadata={"help": "Dropout on the attention weights while training, "
                                                                    "in [0, 1) (on CPU it leaves the fused attention "
                                                                    "kernel: about 20% fewer tokens/s in one run)."})
    batch_size: int = field(default=16, metadata={"help": "Sequence windows per step, over all processes (each of "
                            "N processes takes its share, so the run is the same on any N)."})
    micro_batch_size: int | None = field(default=None, metadata={"help": "Windows per forward/backward pass "
                                         "(gradients accumulate over the batch; smaller needs less activation memory, "
                                         "same update). None = the whole batch."})
    group_by_length: bool = field(default=False, metadata={"help": "Draw each step's windows from a shuffled pool of "
                                  "`batch_size` x 50 windows sorted by length, so a batch pads little (long windows: "
                                  "`--window-tokens` above the default); the batches' order stays shuffled."})
    chat_share: float = field(default=0.1, metadata={"help": "Share of steps that train on chat conversations (train.jsonl), in [0, 1)."})
    chat_batch_size: int = field(default=4, metadata={"help": "Conversations per chat step, over all processes."})
    chat_max_tokens: int = field(default=384, metadata={"help": "Chat conversations are cut to this many tokens."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the sequence windows (ignored when max_steps or max_minutes is set)."})
    max_steps: int | None = field(default=None, metadata={"help": "Steps to run (overrides epochs)."})
    max_minutes: float | None = field(default=None, metadata={"help": "Wall-clock training budget in minutes (overrides epochs; the schedule follows the clock)."})
    save_minutes: tuple[float, ...] = field(default=(), metadata={"help": "Elapsed minutes at which to write a serveable snapshot (learning curves)."})
    eval_users: int = field(default=200, metadata={"help": "Validation users scored at the end (0 = skip)."})
    eval_k: int = field(default=10, metadata={"help": "K of HR@K / NDCG@K in validation."})
    bf16: str = field(default="auto", metadata={"help": "bf16 autocast: auto (when the CPU or GPU supports it), on, off."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None = torch's default)."})
    average_from: float | None = field(default=None, metadata={"help": "Serve the mean of the weights after every "
                                       "step from this share of the run on (tail weight averaging, as SWA/LAWA), in "
                                       "[0, 1), and keep the last step's weights as the snapshot `seq-last`; 0 = serve "
                                       "the last step's weights. None = 0 for the tokens reading (0.5 lost 0.003 "
                                       f"NDCG@10 in one 100-minute ML-100k run), {EVENTS_AVERAGE_FROM:g} for the events "
                                       "reading (1.03 x its last step on ML-1M validation); BENCHMARKS.md."})
    trim_above_mb: float = field(default=0.0, metadata={"help": "Also return freed heap memory to the OS (glibc) after "
                                 "every step that ends above this many MiB, so peak RSS stays near it; 0 = only every "
                                 "50 steps (the default: at 2,560 a 100-minute run peaked 0.5 GiB lower but trained "
                                 "17% fewer tokens per second, BENCHMARKS.md)."})
    head_rows_multiple: int = field(default=256, metadata={"help": "Pad the supervised positions to a multiple of "
                                    "this many rows before the output head (64 at most for chat steps, whose head is "
                                    "the whole vocabulary), so its matmul sees few shapes; 0 = no padding (resident "
                                    "memory then crept 0.6 GiB in 6 minutes, BENCHMARKS.md)."})
    checkpoint_every: int = field(default=500, metadata={"help": "Save the resumable state (trained tensors, "
                                  "optimizer, data position) every N steps into checkpoints/state/ for `--resume`; "
                                  "0 = never."})
    seed: int = field(default=0, metadata={"help": "Seed for data order and chat-step choice."})
    init_model: str | None = field(default=None, metadata={"help": "Start from this trained model folder (continual runs)."})

    def __post_init__(self) -> None:
        self.save_minutes = tuple(float(m) for m in self.save_minutes)
        self.lora_targets = tuple(self.lora_targets)
        if self.learning_rate is None:
            self.learning_rate = LORA_LEARNING_RATE if self.lora else LEARNING_RATE
        if self.dropout is None:
            self.dropout = EVENTS_DROPOUT if self.reading == "events" else 0.0
        if self.average_from is None:
            self.average_from = EVENTS_AVERAGE_FROM if self.reading == "events" else 0.0
        problems = []
        if self.reading not in READINGS:
            problems.append(f"`reading` must be one of {', '.join(READINGS)}, got {self.reading!r}")
        if self.reading == "events":
            unsupported = [name for name, on in (("lora", self.lora),
                                                 ("micro_batch_size", self.micro_batch_size is not None),
                                                 ("group_by_length", self.group_by_length)) if on]
            if unsupported:
                problems.append(f"`reading` events does not take {', '.join(unsupported)} (events windows are "
                                "always grouped by length)")
            if self.events_popularity is not None and self.events_popularity < 0:
                problems.append(f"`events_popularity` must be >= 0 or None, got {self.events_popularity}")
            if self.events_max_len < 1:
                problems.append(f"`events_max_len` must be >= 1, got {self.events_max_len}")
        for name in ("lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                problems.append(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout}")
        if self.lora and not self.lora_targets:
            problems.append("`lora_targets` must name at least one module with `lora`")
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
        for name in ("rows_steps", "warmup_steps", "eval_users", "checkpoint_every"):
            if getattr(self, name) < 0:
                problems.append(f"`{name}` must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"`{name}` must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.average_from < 1.0:
            problems.append(f"`average_from` must be in [0, 1), got {self.average_from}")
        for name in ("weight_decay", "rows_weight_decay"):
            if getattr(self, name) < 0:
                problems.append(f"`{name}` must be >= 0, got {getattr(self, name)}")
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


def snapshot_name(minutes: float) -> str:
    """The folder under `checkpoints/` of the serveable snapshot written at `minutes` of training."""
    return f"seq-{minutes:05.1f}min"


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


GROUP_POOL = 50  # batches per length-sorted pool (HF transformers' LengthGroupedSampler uses the same multiple)


def window_order(n: int, seed: int, lengths: Sequence[int] | None = None, batch_size: int = 1) -> Iterator[int]:
    """An endless stream of window indices, a fresh seeded permutation each epoch. With `lengths`, every
    pool of `batch_size` x GROUP_POOL consecutive indices of that permutation is sorted by length, cut
    into batches of `batch_size` and the batches shuffled: each batch holds windows of similar length
    (little padding) while the run still sees the windows in random order. Written out rather than
    taken from HF's LengthGroupedSampler: that one puts the longest batch first and yields one epoch,
    and the resumable loop needs an endless stream that is a pure function of (seed, windows taken)."""
    epoch = 0
    while True:
        rng = np.random.default_rng(seed + epoch)
        perm = rng.permutation(n)
        if lengths is None:
            yield from perm.tolist()
        else:
            pool = batch_size * GROUP_POOL
            for start in range(0, n, pool):
                part = sorted(perm[start:start + pool].tolist(), key=lambda i: -lengths[i])
                batches = [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
                for b in rng.permutation(len(batches)).tolist():
                    yield from batches[b]
        epoch += 1


def save_model_folder(model: Any, tokenizer: Any, source_dir: Path, target: Path) -> Path:
    """A serveable HF folder (weights, tokenizer, chatrec_tokens.json, trie.npz), written atomically."""
    from finetune.export import _save_model_folder

    _save_model_folder(model, tokenizer, source_dir, target, "float32")
    return target


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Process `rank`'s contiguous share of a global batch (sizes differ by at most one)."""
    n = len(items)
    return list(items[rank * n // world:(rank + 1) * n // world])


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak CUDA allocation when on GPU, in MiB."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return float(torch.cuda.max_memory_allocated() / 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_adapter(peft_model: Any, bundle: Bundle, base: Path) -> Path:
    """The LoRA adapter (no embedding rows; vLLM refuses those) into `BUNDLE/adapter/`, atomically."""
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    with atomic_path(bundle.adapter_dir) as tmp:
        peft_model.save_pretrained(str(tmp), save_embedding_layers=False)
    return bundle.adapter_dir


def recipe_model(source: str | Path, cfg: SequenceConfig, device: str = "cpu") -> tuple[Any, Any, Any, Any]:
    """The recipe's trainable model from an extended model folder: its bottom `keep_layers` layers,
    peft LoRA on them with `lora`, wrapped as a `RowsModel` with the recipe's dropouts, every trained
    tensor requiring grad (the rows stage drops the trunk's grads itself). Returns (rows model, peft
    model or None, tokenizer, token map); `train_sequences` and the benchmarks build it here alike."""
    from finetune import rows_model as rmod
    from tokenizer_ext import load_extended

    model, tokenizer, token_map = load_extended(source, num_layers=cfg.keep_layers)
    new_ids = token_map.all_ids()
    first = min(new_ids)
    if new_ids != list(range(first, len(tokenizer))):
        raise BundleError(f"{source}: the added tokens are not the last ids of the vocabulary; "
                          "re-run `chatrec tokenizer extend`")
    truncate_layers(model, cfg.keep_layers)
    peft_model = rmod.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) if cfg.lora \
        else None
    model.to(device)
    rm = rmod.RowsModel(model, first, cfg.dropout or 0.0, cfg.attention_dropout)
    for p in (rm.new_rows, *rm.trunk):
        p.requires_grad_(True)
    return rm, peft_model, tokenizer, token_map


def in_averaged_tail(cfg: SequenceConfig, done: float, step: int) -> bool:
    """Whether the weights after `step` (`done` of the run) join the tail average (`average_from`)."""
    if not cfg.average_from:  # None or 0: no average
        return False
    return done >= cfg.average_from and step > cfg.rows_steps


def optimizer_groups(rm: Any, cfg: SequenceConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups: the added rows at `rows_learning_rate` with `rows_weight_decay`, the trunk
    (kept layers or LoRA matrices) at `learning_rate` with `weight_decay`; `peak` is what the schedule scales."""
    return [
        {"params": [rm.new_rows], "lr": cfg.rows_learning_rate, "weight_decay": cfg.rows_weight_decay,
         "peak": cfg.rows_learning_rate},
        {"params": rm.trunk, "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "peak": cfg.learning_rate},
    ]


def train_sequences(bundle: Bundle | str | Path, config: SequenceConfig | None = None, *,
                    quiet: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train `BUNDLE/model` on the bundle's sequences (+ chat share) into `BUNDLE/trained/` (and, with
    `lora`, the adapter into `BUNDLE/adapter/`); returns counts. Runs in one process, or in several
    under `accelerate launch` (DDP: each process takes its share of every global batch, gradients
    are all-reduced, the main process saves). `resume` continues from `BUNDLE/checkpoints/state/`."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    cfg = config or SequenceConfig()
    if cfg.reading == "events":
        if resume:
            raise ConfigError("`--resume` is not available with `--reading events` yet")
        from finetune.events import train_events

        return train_events(bundle, cfg, quiet=quiet)
    model_dir = bundle.require("model")
    seq_path = bundle.require("train") / "sequences.jsonl"
    if not seq_path.exists():
        raise BundleError(f"{seq_path} does not exist (the bundle was built before sequences existed); "
                          f"run `chatrec data build --bundle {bundle.root}` again")
    source = Path(cfg.init_model) if cfg.init_model else model_dir

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, broadcast
    from tqdm.auto import tqdm

    from chatrec.conversation import ConversationError, render_conversation
    from finetune import rows_model as rmod

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # cpu=True where there is no GPU: Accelerate then runs several launched processes as MULTI_CPU (gloo)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no",
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.batch_size < world or (cfg.chat_share and cfg.chat_batch_size < world):
        raise ConfigError(f"`batch_size` ({cfg.batch_size}) and `chat_batch_size` ({cfg.chat_batch_size}) are "
                          f"global batches shared by the {world} processes; each must be >= {world}")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = str(accelerator.device)
    rm, peft_model, tokenizer, token_map = recipe_model(source, cfg, device)
    model, new_ids = rm.model, token_map.all_ids()
    layers = model.config.num_hidden_layers
    params = [rm.new_rows, *rm.trunk]  # fixed for the whole run (DDP registers them once)
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
    optimizer = torch.optim.AdamW(optimizer_groups(rm, cfg))
    ckpt_root = bundle.path(CHECKPOINTS)
    log_path = ckpt_root / TRAIN_LOG
    average = TailAverage(params)
    rng = random.Random(cfg.seed)
    progress = Progress()
    if resume:
        progress = load_state(ckpt_root, params, optimizer, average, rng)
        if main:
            truncate_log(log_path, progress.step)
    elif main:
        shutil.rmtree(ckpt_root, ignore_errors=True)
        ckpt_root.mkdir(parents=True)
    accelerator.wait_for_everyone()
    net = accelerator.prepare(rm)  # DistributedDataParallel over several processes; `rm` itself in one
    no_sync = (lambda: accelerator.no_sync(net)) if world > 1 else None
    order = window_order(len(windows), cfg.seed, [len(w) for w in windows] if cfg.group_by_length else None,
                         cfg.batch_size)
    for _ in range(progress.windows_taken):  # the data order is a pure function of the windows taken
        next(order)
    pending_saves = [m for m in sorted(cfg.save_minutes) if m * 60 > progress.elapsed_s]
    bar = tqdm(total=planned or int(cfg.max_minutes * 60 if cfg.max_minutes else 0), desc="finetune (sequence)",
               disable=quiet or not main, unit="step" if planned else "s", initial=progress.step if planned else 0)
    model.train()
    start_step = step = progress.step
    t_start = time.perf_counter() - progress.elapsed_s

    def clock() -> float:
        """Seconds since the run began, the main process's reading on every process (one schedule, one stop)."""
        elapsed = time.perf_counter() - t_start
        if world > 1:
            elapsed = float(broadcast(torch.tensor([elapsed], device=device), from_process=0)[0])
        return elapsed

    with log_path.open("a" if resume else "w") if main else contextlib.nullcontext() as log:
        while True:
            elapsed = clock()
            if planned is not None and step >= planned:
                break
            if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
                break
            done = step / planned if planned else elapsed / (cfg.max_minutes * 60)  # type: ignore[operator]
            factor = lr_factor(done, step, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["peak"] * factor
            kind = "chat" if chat_rows is not None and rng.random() < cfg.chat_share else "sequence"
            autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
            if kind == "chat":
                batch = [chat_row(rng) for _ in range(cfg.chat_batch_size)]  # the global batch, on every process
                local = shard(batch, rank, world)
                n_targets = rmod.chat_targets(batch)
                with autocast:
                    loss, n_local = rmod.chat_loss(net, local, pad_id, device, min(cfg.head_rows_multiple, 64))
                (loss * (world * n_local / n_targets)).backward()  # DDP averages: the global batch's gradient
                part = loss.detach().float().cpu() * (n_local / n_targets)
                n_tokens = sum(len(r) for r in batch)
                n_padded = sum(rmod.padded_tokens([c.input_ids for c in shard(batch, r, world)]) for r in range(world))
            else:
                batch_w = [windows[next(order)] for _ in range(cfg.batch_size)]
                progress.windows_taken += cfg.batch_size
                local = shard(batch_w, rank, world)
                n_targets = sum(len(w) - 1 for w in batch_w)
                n_local = sum(len(w) - 1 for w in local)
                part, _ = rmod.sequence_backward(net, local, pad_id, device, cfg.micro_batch_size, autocast,
                                                 cfg.head_rows_multiple, weight=world * n_local / n_targets,
                                                 no_sync=no_sync)
                part = part * (n_local / n_targets)
                n_tokens = sum(len(w) for w in batch_w)
                n_padded = sum(rmod.padded_tokens(shard(batch_w, r, world), cfg.micro_batch_size) for r in range(world))
            if step < cfg.rows_steps:  # first stage: the added rows alone
                for p in rm.trunk:
                    p.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if in_averaged_tail(cfg, done, step):
                average.update()
            value = float(accelerator.reduce(part.to(device), "sum")) if world > 1 else float(part)
            if kind == "sequence":
                progress.targets_seen += n_targets
                progress.first_loss = value if math.isnan(progress.first_loss) else progress.first_loss
                progress.last_loss = value
                progress.ema = value if math.isnan(progress.ema) else 0.95 * progress.ema + 0.05 * value
            progress.tokens_seen += n_tokens
            elapsed = time.perf_counter() - t_start
            rss = resident_mb()
            if step % TRIM_EVERY == 0 or (cfg.trim_above_mb and rss > cfg.trim_above_mb):
                release_free_memory()
            if log is not None:
                log.write(json.dumps({"step": step, "kind": kind, "loss": value, "lr": optimizer.param_groups[1]["lr"],
                                      "tokens": n_tokens, "padded": n_padded, "targets": n_targets,
                                      "elapsed_s": round(elapsed, 2), "rss_mb": rss}) + "\n")
                log.flush()
            bar.update(1 if planned else int(elapsed) - bar.n)
            bar.set_postfix(loss=f"{progress.ema:.3f}", tok_s=f"{progress.tokens_seen / max(elapsed, 1e-9):.0f}")
            while main and pending_saves and elapsed >= pending_saves[0] * 60:
                minutes = pending_saves.pop(0)
                name = snapshot_name(minutes)
                save_model_folder(_snapshot(rm, peft_model), tokenizer, model_dir, ckpt_root / name)
                progress.snapshots[name] = {"minutes": minutes, "step": step}
            if main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                progress.step, progress.elapsed_s = step, elapsed
                save_state(ckpt_root, progress, params, optimizer, average, rng)
    bar.close()
    elapsed = time.perf_counter() - t_start
    model.eval()
    counts: dict[str, Any] = {
        "recipe": "sequence", "lora": cfg.lora, "processes": world, "resumed_from": start_step,
        "windows": len(windows), "chat_rows": len(chat_rows or ()), "steps": step,
        "layers": layers, "bf16": bf16, "train_minutes": round(elapsed / 60, 2),
        "trained_params": sum(p.numel() for p in params),
        "first_loss": progress.first_loss, "final_loss": progress.last_loss, "tokens": progress.tokens_seen,
        "tokens_per_s": (progress.tokens_seen / elapsed if elapsed > 0 else 0.0),
        "targets": progress.targets_seen,
        "targets_per_s": progress.targets_seen / elapsed if elapsed > 0 else 0.0,
        "epochs_seen": progress.targets_seen / max(1, sum(len(w) - 1 for w in windows)),
        "averaged_steps": average.count,
    }
    if main:
        counts.update(_save_and_score(bundle, cfg, rm, peft_model, average, tokenizer, model_dir, source, progress,
                                      step, elapsed))
        counts["peak_rss_mb"] = peak_memory_mb()
        bundle.record_stage("finetune", config=cfg, inputs={"sequences.jsonl": seq_path, "model": source},
                            outputs={"trained": bundle.path(TRAINED), "log": log_path}, counts=counts,
                            extra={"snapshots": dict(sorted(progress.snapshots.items()))})
    accelerator.wait_for_everyone()
    return counts


def _save_and_score(bundle: Bundle, cfg: SequenceConfig, rm: Any, peft_model: Any, average: TailAverage,
                    tokenizer: Any, model_dir: Path, source: Path, progress: Progress, step: int,
                    elapsed: float) -> dict[str, Any]:
    """Main process: `trained/` (LoRA merged), `adapter/` (with LoRA), the last step's snapshot when the
    served weights are a tail average, and the validation metrics."""
    ckpt_root = bundle.path(CHECKPOINTS)
    if average.count:  # keep the last step's weights for comparison, then serve the mean
        save_model_folder(_snapshot(rm, peft_model), tokenizer, model_dir, ckpt_root / LAST)
        progress.snapshots[LAST] = {"minutes": round(elapsed / 60, 2), "step": step}
        average.copy_to_params()
    final = rm.write_back()
    if peft_model is not None:
        save_adapter(peft_model, bundle, source)
        final = peft_model.merge_and_unload()
    else:
        shutil.rmtree(bundle.adapter_dir, ignore_errors=True)  # an earlier LoRA run's adapter is not this model's
    trained = save_model_folder(final, tokenizer, model_dir, bundle.path(TRAINED))
    metrics: dict[str, float] = {}
    if cfg.eval_users:
        metrics = evaluate_sequences(final, tokenizer, bundle, trained, cfg.eval_users, cfg.eval_k)
    return {f"valid_{k}": v for k, v in metrics.items()}

def _snapshot(rm: Any, peft_model: Any = None) -> Any:
    """A serveable model with the current rows written in (and LoRA merged into a copy); training
    continues on the same tensors."""
    from finetune.rows_model import merged_copy

    was_training = rm.model.training
    rm.model.eval()
    model = rm.write_back()
    if peft_model is not None:
        model = merged_copy(peft_model)
    if was_training:
        rm.model.train()
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
