"""Popularity and random: the two reference points every recommender must beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chatrec.baselines.base import Baseline, Sequences, check_sequences


class Popularity(Baseline):
    """Scores every item by how many training interactions it has, the same for every user."""

    name = "popularity"

    def __init__(self) -> None:
        super().__init__()
        self.counts: np.ndarray | None = None

    def fit(self, sequences: Sequences, n_items: int, *, valid: tuple[Sequences, Sequence[int]] | None = None
            ) -> Popularity:
        check_sequences(sequences, n_items)
        counts = np.zeros(n_items, dtype=np.float64)
        for seq in sequences:
            np.add.at(counts, np.asarray(seq, dtype=np.int64), 1.0)
        self.counts, self.n_items = counts, n_items
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        self._check_fitted()
        assert self.counts is not None
        return np.tile(self.counts, (len(histories), 1))  # [B, N]


class RandomBaseline(Baseline):
    """Uniformly random scores (seeded): the floor that every other system must clear."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def fit(self, sequences: Sequences, n_items: int, *, valid: tuple[Sequences, Sequence[int]] | None = None
            ) -> RandomBaseline:
        check_sequences(sequences, n_items)
        self.n_items = n_items
        self._rng = np.random.default_rng(self.seed)
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        n_items = self._check_fitted()
        return self._rng.random((len(histories), n_items))  # [B, N]

    def config(self) -> dict[str, int]:
        return {"seed": self.seed}
