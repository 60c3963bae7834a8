"""Choosing the items of a chat answer: the model's retrieval fused with what the words and titles say.

`Picker.pick` scores every item that passes the hard filters (a mask) with a weighted sum of
signals, each standardised over the candidates:
- **words**: the request's cosine to the item's text (the bundle's text encoder, `TextSpace`);
- **categories**: the share of the implied categories the item carries (soft: an implied
  category ranks its items first but removes nothing);
- **neighbours**: co-occurrence cosine to the liked titles minus that to the disliked ones,
  from the bundle's interactions ("how many people who liked A also liked B");
- **model**: the constrained retrieval's rank for the items it returned (its top `model_k`, 5);
- **popularity**: log of the item's interaction count (a prior that breaks ties).
The evidence behind each pick (categories it shares with the request, the liked title it is
closest to and how many users had both) is kept for the answer text and for "why those?".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatrec.errors import ConfigError

FIRST_TIER = 1e6  # added to the sort key of items carrying the surest asked category (not to their score)


@dataclass
class PickConfig:
    """Weights of the signals `Picker.pick` adds up (each signal is a z-score over the candidates).

    Neighbours and popularity were chosen on ML-100k's validation users (`benchmarks/tune_picks.py`:
    16 settings, then popularity 0.25 -> 0.1 with the stated-titles protocol, `tune_picks_stated*.json`:
    3 stated titles 0.0471 -> 0.0493, every other row level); words stays at 1.0, since that validation's requests are genres and decades only
    and the words signal is what steers a request by theme. Whatever the weights, the items
    carrying the surest implied category come first (`FIRST_TIER`).
    """

    words: float = field(default=1.0, metadata={"help": "Weight of the request's similarity to item text."})
    categories: float = field(default=3.0, metadata={"help": "Weight of carrying the implied categories."})
    neighbours: float = field(default=3.0, metadata={"help": "Weight of co-occurrence with the liked titles."})
    model: float = field(default=0.75, metadata={"help": "Weight of the model's retrieval rank."})
    popularity: float = field(default=0.1, metadata={"help": "Weight of log popularity."})
    recency: float = field(default=1.0, metadata={
        "help": "Weight of the liked title n places before the last-named one in the neighbours signal: recency**n "
                "(1.0 = every liked title counts the same)."})
    shrink: float = field(default=0.0, metadata={
        "help": "Added to the co-occurrence cosine's denominator (damps pairs of rare items), as item-kNN does."})
    model_k: int = field(default=5, metadata={
        "help": "Items asked of the model's retrieval per turn (5 keeps its beam at 10, as a plain top-3 had)."})

    def __post_init__(self) -> None:
        if self.model_k < 1:
            raise ConfigError(f"`model_k` must be >= 1, got {self.model_k}")
        if not 0.0 < self.recency <= 1.0:
            raise ConfigError(f"`recency` must be in (0, 1], got {self.recency}")
        if self.shrink < 0:
            raise ConfigError(f"`shrink` must be >= 0, got {self.shrink}")


@dataclass(frozen=True)
class Evidence:
    """Why one item was picked, in facts from the data."""

    shared_categories: tuple[str, ...] = ()
    closest_liked: int | None = None      # catalog position of the liked title it co-occurs with most
    co_users: int = 0                     # users who had both
    model_rank: int | None = None         # 1-based rank in the model's retrieval, if it returned it


class CoOccurrence:
    """Item popularity and item-item co-occurrence from an interaction log (sparse, per request)."""

    def __init__(self, positions: dict[str, int], interactions: Any | None, negative_actions: Sequence[str] = ()):
        n = len(positions)
        self.n_items = n
        self.matrix: Any = None
        self.count = np.zeros(n, np.float32)
        if interactions is None or len(interactions) == 0:
            return
        from scipy import sparse

        frame = interactions[~interactions["action"].astype(str).isin(list(negative_actions))]
        cols = frame["item_id"].astype(str).map(positions)
        keep = cols.notna().to_numpy()
        users = frame["user_id"].astype(str).to_numpy()[keep]
        cols = cols.to_numpy()[keep].astype(np.int64)
        user_codes, rows = np.unique(users, return_inverse=True)
        m = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(user_codes), n))
        m.data[:] = 1.0
        m.sum_duplicates()
        m.data[:] = 1.0  # a user counts once per item
        self.matrix = m.tocsc()
        self.count = np.asarray(self.matrix.sum(axis=0)).ravel().astype(np.float32)

    def co_counts(self, item: int) -> np.ndarray:
        """[N] users who had both `item` and each other item."""
        if self.matrix is None:
            return np.zeros(self.n_items, np.float32)
        users = self.matrix[:, item]  # [U, 1]
        return np.asarray((self.matrix.T @ users).todense()).ravel().astype(np.float32)

    def cosine(self, item: int, shrink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """([N] co-occurrence cosine to `item`, `shrink` added to its denominator, [N] co-counts)."""
        co = self.co_counts(item)
        denom = np.sqrt(np.maximum(self.count, 1.0) * max(float(self.count[item]), 1.0))
        return co / (denom + shrink), co


def _z(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    vals = x[mask]
    if len(vals) == 0:
        return np.zeros_like(x)
    sd = float(vals.std())
    return (x - float(vals.mean())) / sd if sd > 1e-9 else np.zeros_like(x)


class Picker:
    """Fuses the signals (see the module docstring) over one catalog."""

    def __init__(self, item_categories: Sequence[Sequence[str]], co: CoOccurrence, config: PickConfig | None = None):
        self.item_categories = [frozenset(str(c) for c in row) for row in item_categories]
        self.category_names = sorted({c for row in self.item_categories for c in row})
        column = {c: j for j, c in enumerate(self.category_names)}
        self.member = np.zeros((len(self.item_categories), len(column)), bool)  # [N, C]
        for i, row in enumerate(self.item_categories):
            self.member[i, [column[c] for c in row]] = True
        self.column = column
        self.co = co
        self.config = config or PickConfig()
        self.log_pop = np.log1p(co.count)

    def carrying(self, categories: Sequence[str]) -> np.ndarray:
        """[N] True where the item has any of `categories`."""
        cols = [self.column[c] for c in categories if c in self.column]
        if not cols:
            return np.zeros(len(self.member), bool)
        return np.asarray(self.member[:, cols].any(axis=1), bool)

    def pick(self, k: int, mask: np.ndarray, *, words: np.ndarray | None = None,
             categories: Sequence[str] = (), liked: Sequence[int] = (), disliked: Sequence[int] = (),
             model_ranked: Sequence[int] = ()) -> list[tuple[int, float, Evidence]]:
        """The top `k` of the items `mask` allows: (position, score, evidence), best first."""
        c = self.config
        score = c.popularity * _z(self.log_pop, mask)
        if words is not None:
            score += c.words * np.clip(_z(words.astype(np.float32), mask), -3.0, 2.5)
        wanted = frozenset(categories)
        cols = [self.column[x] for x in categories if x in self.column]
        if cols:  # the first category counts fully, later ones (less sure) 0.6
            weight = np.array([1.0] + [0.6] * (len(cols) - 1), np.float32)
            carried = self.member[:, cols] * weight  # [N, K]
            score += c.categories * (0.75 * carried.max(axis=1) + 0.25 * carried.sum(axis=1) / weight.sum())
        co_best = np.full(len(mask), -1, np.int64)
        co_users = np.zeros(len(mask), np.float32)
        if liked or disliked:
            near = np.zeros(len(mask), np.float32)
            best_cos = np.zeros(len(mask), np.float32)
            for n, j in enumerate(reversed(liked[-10:])):  # the last-named first
                cos, co = self.co.cosine(j, c.shrink)
                near += c.recency ** n * cos
                better = cos > best_cos
                best_cos[better], co_best[better], co_users[better] = cos[better], j, co[better]
            for j in disliked[-10:]:
                near -= 0.5 * self.co.cosine(j)[0]
            score += c.neighbours * _z(near, mask)
        rank_of = {int(i): r for r, i in enumerate(model_ranked, 1)}
        if model_ranked:
            bonus = np.zeros(len(mask), np.float32)
            for i, r in rank_of.items():
                bonus[i] = 1.0 - (r - 1) / max(len(model_ranked), 1)
            score += c.model * 2.0 * bonus
        score = np.where(mask, score, -np.inf)
        # an implied category ranks its items first (removing nothing): the items carrying the surest
        # one come before the rest, each group in score order, whatever the other signals' weights
        key = score + np.where(self.member[:, cols[0]], FIRST_TIER, 0.0) if cols else score
        n = min(k, int(mask.sum()))
        top = np.argpartition(-key, n - 1)[:n] if n < len(key) else np.arange(len(key))
        top = top[np.argsort(-key[top], kind="stable")][:n]
        out = []
        for t in top:
            i = int(t)
            ev = Evidence(tuple(sorted(self.item_categories[i] & wanted)),
                          int(co_best[i]) if co_best[i] >= 0 and co_users[i] > 0 else None,
                          int(co_users[i]), rank_of.get(i))
            out.append((i, float(score[i]), ev))
        return out
