"""The interface every baseline implements: fit on item-index sequences, score a batch of histories.

Items are integer indices into the catalog (0..n_items-1); `chatrec.evaluation` maps item ids to
indices. Histories are time-ordered, oldest first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from chatrec.errors import ChatrecError
from chatrec.metrics import top_k_from_scores

Sequences = Sequence[Sequence[int]]


class NotFittedError(ChatrecError):
    """`score` or `recommend` was called before `fit`."""


class Baseline(ABC):
    """A recommender over item indices: `fit(sequences, n_items)`, `score(histories) -> [B, N]`."""

    name: str = "baseline"

    def __init__(self) -> None:
        self.n_items: int | None = None

    @abstractmethod
    def fit(self, sequences: Sequences, n_items: int, *, valid: tuple[Sequences, Sequence[int]] | None = None
            ) -> Baseline:
        """Learn from per-user item sequences; `valid` = (histories, targets) may be used for early stopping."""

    @abstractmethod
    def score(self, histories: Sequences) -> np.ndarray:
        """Scores [B, n_items] (higher = better) for each history."""

    def config(self) -> dict[str, Any]:
        """Hyper-parameters, recorded in the eval manifest."""
        return {}

    def _check_fitted(self) -> int:
        if self.n_items is None:
            raise NotFittedError(f"{self.name}: call fit() before score() or recommend()")
        return self.n_items

    def recommend_batch(
        self, histories: Sequences, k: int, exclude: Sequence[Collection[int]] | None = None
    ) -> list[list[int]]:
        """Top-`k` item indices per history, best first, never an item in that row's `exclude`."""
        n_items = self._check_fitted()
        scores = self.score(histories)  # [B, N]
        mask = None
        if exclude is not None:
            mask = np.zeros((len(histories), n_items), dtype=bool)
            for row, items in enumerate(exclude):
                idx = np.fromiter(items, dtype=np.int64)
                mask[row, idx[(idx >= 0) & (idx < n_items)]] = True
        top = top_k_from_scores(scores, k, mask)
        return [[int(i) for i in row if i >= 0] for row in top]

    def recommend(self, history: Sequence[int], k: int, exclude: Collection[int] = ()) -> list[int]:
        """Top-`k` item indices for one history."""
        return self.recommend_batch([history], k, [exclude])[0]


def check_sequences(sequences: Sequences, n_items: int) -> None:
    """Raise a `ChatrecError` when an item index is outside 0..n_items-1."""
    if n_items < 1:
        raise ChatrecError(f"n_items must be >= 1, got {n_items}")
    for u, seq in enumerate(sequences):
        for item in seq:
            if not 0 <= item < n_items:
                raise ChatrecError(f"sequence {u} holds item index {item}, outside 0..{n_items - 1}")
