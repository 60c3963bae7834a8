"""A compact SASRec (Kang & McAuley, 2018) in torch, trained here on CPU.

Causal self-attention over the last `max_len` items; the output at each position scores the next
item against the (tied) item embeddings. Trained with softmax cross-entropy (stronger than the
paper's one-negative BCE; Klenitskiy & Vasilev, RecSys 2023) over the whole catalog or, for speed on
CPU, over `negatives` uniform items shared by a batch; early-stopped on the validation split's
NDCG@10 when one is given.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chatrec.baselines.base import Baseline, Sequences, check_sequences
from chatrec.deps import require
from chatrec.errors import ConfigError
from chatrec.metrics import ndcg, target_rank


@dataclass
class SASRecConfig:
    hidden: int = field(default=64, metadata={"help": "Embedding and hidden size (>= 4, divisible by `heads`)."})
    blocks: int = field(default=2, metadata={"help": "Self-attention blocks (>= 1)."})
    heads: int = field(default=1, metadata={"help": "Attention heads (>= 1)."})
    max_len: int = field(default=50, metadata={"help": "Most recent items the model reads (>= 2)."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout rate in [0, 1)."})
    epochs: int = field(default=50, metadata={"help": "Maximum training epochs (>= 1)."})
    batch_size: int = field(default=128, metadata={"help": "Training sequences per step (>= 1)."})
    negatives: int | None = field(default=None, metadata={
        "help": "Uniform negatives shared per batch for a sampled softmax (None = full softmax over the catalog; "
                "used anyway when the catalog has no more items than this)."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (> 0)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (>= 0)."})
    eval_every: int = field(default=2, metadata={"help": "Epochs between validation checks (>= 1)."})
    patience: int = field(default=5, metadata={"help": "Validation checks without improvement before stopping (>= 1)."})
    max_minutes: float | None = field(default=None, metadata={
        "help": "Stop after the epoch that ends past this many training minutes (the best validated weights are "
                "kept; None = no time limit)."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, dropout and shuffling."})
    threads: int | None = field(default=1, metadata={
        "help": "torch CPU threads while training and scoring (None = torch's default). One thread is far faster "
                "than two on a busy shared CPU; raise it on a dedicated machine."})

    def __post_init__(self) -> None:
        checks = [
            ("hidden", self.hidden >= 4, ">= 4"), ("blocks", self.blocks >= 1, ">= 1"),
            ("heads", self.heads >= 1, ">= 1"), ("max_len", self.max_len >= 2, ">= 2"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"), ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"), ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"), ("eval_every", self.eval_every >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "> 0 or None"),
            ("negatives", self.negatives is None or self.negatives >= 1, ">= 1 or None"), ("threads", self.threads is None or self.threads >= 1, ">= 1 or None"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"`{name}` must be {allowed}, got {getattr(self, name)!r}")
        if self.hidden % self.heads:
            raise ConfigError(f"`hidden` ({self.hidden}) must be divisible by `heads` ({self.heads})")


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch CPU threads, then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_net(n_items: int, cfg: SASRecConfig) -> Any:
    import torch
    from torch import nn

    class SASRecNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)  # index 0 = padding
            self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
            self.drop = nn.Dropout(cfg.dropout)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=cfg.hidden, dropout=cfg.dropout,
                                           batch_first=True, norm_first=True)
                for _ in range(cfg.blocks)
            )
            self.norm = nn.LayerNorm(cfg.hidden)
            nn.init.normal_(self.item.weight, std=cfg.hidden ** -0.5)

        def forward(self, seqs: torch.Tensor) -> torch.Tensor:
            """seqs [B, T] (item index + 1, left-padded with 0) -> hidden states [B, T, D]."""
            t = seqs.shape[1]
            keep = (seqs > 0).unsqueeze(-1).float()  # [B, T, 1]
            x = self.item(seqs) * math.sqrt(cfg.hidden) + self.pos(torch.arange(t, device=seqs.device))
            x = self.drop(x) * keep
            causal = nn.Transformer.generate_square_subsequent_mask(t, device=seqs.device)  # [T, T]
            for layer in self.layers:
                x = layer(x, src_mask=causal, is_causal=True) * keep
            return self.norm(x)

        def logits(self, hidden: torch.Tensor) -> torch.Tensor:
            """hidden [..., D] -> scores over the catalog [..., N]."""
            return hidden @ self.item.weight[1:].T

    return SASRecNet()


def _training_windows(sequences: Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each sequence, from its end, into windows of max_len + 1 items that overlap by one.

    Returns inputs [W, T] (item index + 1, left-padded with 0) and targets [W, T] (item index, -100 = pad).
    """
    inputs, targets = [], []
    for seq in sequences:
        seq = list(seq)
        end = len(seq)
        while end >= 2:
            window = seq[max(0, end - max_len - 1):end]
            x = np.zeros(max_len, dtype=np.int64)
            y = np.full(max_len, -100, dtype=np.int64)
            n = len(window) - 1
            x[max_len - n:] = np.asarray(window[:-1]) + 1
            y[max_len - n:] = np.asarray(window[1:])
            inputs.append(x)
            targets.append(y)
            end -= max_len
    if not inputs:
        return np.zeros((0, max_len), dtype=np.int64), np.zeros((0, max_len), dtype=np.int64)
    return np.stack(inputs), np.stack(targets)


class SASRec(Baseline):
    """Self-attentive sequential recommendation, full-softmax trained, early-stopped on validation."""

    name = "sasrec"

    def __init__(self, config: SASRecConfig | None = None, *, progress: bool = True) -> None:
        super().__init__()
        self.cfg = config or SASRecConfig()
        self.progress = progress
        self.net: Any = None
        self.history: list[dict[str, float]] = []  # one record per validation check

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def _encode(self, histories: Sequences) -> np.ndarray:
        """Left-padded [B, T] of item index + 1."""
        t = self.cfg.max_len
        out = np.zeros((len(histories), t), dtype=np.int64)
        for row, hist in enumerate(histories):
            tail = list(hist)[-t:]
            if tail:
                out[row, t - len(tail):] = np.asarray(tail) + 1
        return out

    def fit(self, sequences: Sequences, n_items: int, *, valid: tuple[Sequences, Sequence[int]] | None = None
            ) -> SASRec:
        require("torch", "the SASRec baseline")
        check_sequences(sequences, n_items)
        with _torch_threads(self.cfg.threads):
            self._train(sequences, n_items, valid)
        return self

    def _train(self, sequences: Sequences, n_items: int, valid: tuple[Sequences, Sequence[int]] | None) -> None:
        import time

        import torch
        from tqdm.auto import tqdm

        cfg = self.cfg
        started = time.monotonic()
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.n_items = n_items
        self.net = _build_net(n_items, cfg)
        inputs, targets = _training_windows(sequences, cfg.max_len)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best_score, best_state, bad_checks = -1.0, None, 0
        self.history = []
        bar = tqdm(range(1, cfg.epochs + 1), desc="sasrec", disable=not self.progress or len(inputs) == 0)
        for epoch in bar:
            self.net.train()
            order = rng.permutation(len(inputs))
            total, steps = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                x = torch.from_numpy(inputs[idx])  # [B, T]
                y = torch.from_numpy(targets[idx])  # [B, T]
                loss = self._loss(x, y, n_items)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
            record = {"epoch": float(epoch), "loss": total / max(steps, 1)}
            out_of_time = cfg.max_minutes is not None and time.monotonic() - started > cfg.max_minutes * 60
            if valid is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_time):
                record["valid_ndcg@10"] = self._valid_ndcg(*valid)
                if record["valid_ndcg@10"] > best_score:
                    best_score, bad_checks = record["valid_ndcg@10"], 0
                    best_state = copy.deepcopy(self.net.state_dict())
                else:
                    bad_checks += 1
            self.history.append(record)
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
            if bad_checks >= cfg.patience or out_of_time:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()

    def _loss(self, x: Any, y: Any, n_items: int) -> Any:
        """Cross-entropy of the next item at every non-padding position (full or sampled softmax)."""
        import torch
        import torch.nn.functional as F

        keep = y >= 0  # [B, T]
        hidden = self.net(x)[keep]  # [M, D]
        target = y[keep]  # [M]
        neg = self.cfg.negatives
        if neg is None or neg >= n_items - 1:
            return F.cross_entropy(self.net.logits(hidden), target)
        table = self.net.item.weight[1:]  # [N, D]
        sampled = torch.randint(0, n_items, (neg,))  # [S]
        pos_logit = (hidden * table[target]).sum(-1, keepdim=True)  # [M, 1]
        neg_logit = hidden @ table[sampled].T  # [M, S]
        neg_logit = neg_logit.masked_fill(sampled[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # [M, 1 + S]
        return F.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long))

    def _valid_ndcg(self, histories: Sequences, targets: Sequence[int]) -> float:
        recs = self.recommend_batch(histories, 10, exclude=[set(h) for h in histories])
        return ndcg([target_rank(r, t) for r, t in zip(recs, targets, strict=True)], 10)

    def score(self, histories: Sequences) -> np.ndarray:
        import torch

        n_items = self._check_fitted()
        was_training = self.net.training
        self.net.eval()
        out = np.empty((len(histories), n_items), dtype=np.float32)
        encoded = self._encode(histories)
        with _torch_threads(self.cfg.threads), torch.inference_mode():
            for start in range(0, len(histories), 256):
                x = torch.from_numpy(encoded[start:start + 256])  # [B, T]
                hidden = self.net(x)[:, -1]  # [B, D]: the newest position
                out[start:start + 256] = self.net.logits(hidden).numpy()
        if was_training:
            self.net.train()
        return out
