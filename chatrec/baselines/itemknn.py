"""Item-kNN over co-occurrence: items liked by the same users are neighbours.

Defaults were picked on the ML-100k validation split (neighbours 50/100/200, shrink 0/10/50, decay 1.0-0.7).

sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink), pruned to each item's top
`neighbors`; a user's score for item j is the recency-weighted sum of sim(h, j) over history items h.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chatrec.baselines.base import Baseline, Sequences, check_sequences
from chatrec.deps import require
from chatrec.errors import ConfigError


@dataclass
class ItemKNNConfig:
    neighbors: int = field(default=50, metadata={"help": "Neighbours kept per item (>= 1)."})
    shrink: float = field(default=10.0, metadata={"help": "Added to the cosine denominator; damps rare pairs (>= 0)."})
    recency_decay: float = field(
        default=0.7,
        metadata={"help": "Weight of a history item n steps before the last one is decay**n; 1.0 = no decay (0 < d <= 1)."},
    )

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ConfigError(f"`neighbors` must be >= 1, got {self.neighbors}")
        if self.shrink < 0:
            raise ConfigError(f"`shrink` must be >= 0, got {self.shrink}")
        if not 0 < self.recency_decay <= 1:
            raise ConfigError(f"`recency_decay` must be in (0, 1], got {self.recency_decay}")


class ItemKNN(Baseline):
    """Co-occurrence item-kNN (cosine with shrinkage, top-n neighbours, recency-weighted history)."""

    name = "itemknn"

    def __init__(self, config: ItemKNNConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or ItemKNNConfig()
        self.sim: Any = None  # scipy.sparse.csr_matrix [N, N]

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def fit(self, sequences: Sequences, n_items: int, *, valid: tuple[Sequences, Sequence[int]] | None = None
            ) -> ItemKNN:
        require("scipy", "the item-kNN baseline")
        from scipy import sparse

        check_sequences(sequences, n_items)
        empty = np.zeros(0, dtype=np.int64)
        rows = np.concatenate([empty] + [np.full(len(s), u, dtype=np.int64) for u, s in enumerate(sequences)])
        cols = np.concatenate([empty] + [np.asarray(s, dtype=np.int64) for s in sequences])
        x = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(sequences), n_items))
        x.data[:] = 1.0  # binary: repeated interactions count once  # [U, N]
        co = (x.T @ x).tocsr()  # [N, N] co-occurrence counts
        co.setdiag(0)
        co.eliminate_zeros()
        norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel())  # [N]
        co = co.tocoo()
        vals = co.data / (norm[co.row] * norm[co.col] + self.cfg.shrink)
        sim = sparse.csr_matrix((vals, (co.row, co.col)), shape=(n_items, n_items))
        self.sim = _prune_rows(sim, self.cfg.neighbors)
        self.n_items = n_items
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        from scipy import sparse

        n_items = self._check_fitted()
        rows: list[int] = []
        cols: list[int] = []
        weights: list[float] = []
        for u, hist in enumerate(histories):
            n = len(hist)
            rows.extend([u] * n)
            cols.extend(int(i) for i in hist)
            weights.extend(self.cfg.recency_decay ** (n - 1 - p) for p in range(n))
        h = sparse.csr_matrix((weights, (rows, cols)), shape=(len(histories), n_items))  # [B, N]
        return np.asarray((h @ self.sim).todense())  # [B, N]


def _prune_rows(sim: Any, keep: int) -> Any:
    """Keep the `keep` largest entries of each row of a CSR matrix."""
    from scipy import sparse

    sim = sim.tocsr()
    rows, cols, vals = [], [], []
    for r in range(sim.shape[0]):
        start, end = sim.indptr[r], sim.indptr[r + 1]
        if start == end:
            continue
        data, idx = sim.data[start:end], sim.indices[start:end]
        if len(data) > keep:
            top = np.argpartition(-data, keep - 1)[:keep]
            data, idx = data[top], idx[top]
        rows.append(np.full(len(data), r))
        cols.append(idx)
        vals.append(data)
    if not rows:
        return sparse.csr_matrix(sim.shape)
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=sim.shape)
