"""Ranking metrics as pure functions over plain data (no model, no I/O).

Conventions: a *rank* is the 0-based position of the held-out target in a system's
recommendation list, or `None` when the target is not in the list. Every metric is the mean over
users, so a system that returns a short list is simply charged with misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence

import numpy as np


def target_rank(recommended: Sequence[Hashable], target: Hashable) -> int | None:
    """The 0-based position of `target` in `recommended`, or None when it is absent."""
    for position, item in enumerate(recommended):
        if item == target:
            return position
    return None


def _ranks(ranks: Iterable[int | None]) -> list[int | None]:
    out = list(ranks)
    if not out:
        raise ValueError("no ranks given: a metric over zero users is undefined")
    return out


def hit_rate(ranks: Iterable[int | None], k: int) -> float:
    """HR@K: the share of users whose target is among their first `k` recommendations."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rs = _ranks(ranks)
    return sum(1 for r in rs if r is not None and r < k) / len(rs)


def ndcg_gains(ranks: Iterable[int | None], k: int) -> np.ndarray:
    """Each user's NDCG@K gain with one relevant item: 1 / log2(rank + 2) when rank < k, else 0
    (per user, for paired comparisons between systems; `ndcg` is their mean)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.array([1.0 / math.log2(r + 2) if r is not None and r < k else 0.0 for r in _ranks(ranks)])


def ndcg(ranks: Iterable[int | None], k: int) -> float:
    """NDCG@K with one relevant item per user: the mean of `ndcg_gains`."""
    return float(ndcg_gains(ranks, k).mean())


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """How sure a one-run comparison is: the ratio and the difference of the means of two systems'
    per-user scores on the same users, each with a percentile interval over users resampled in
    pairs (`scipy.stats.bootstrap`, paired), so the spread of the test set itself is in the interval."""
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two equal-length score vectors of at least 2 users, got {x.shape} and {y.shape}")
    if not y.mean() > 0:
        raise ValueError("the second system's mean score is 0: the ratio is undefined")
    out = {"users": float(len(x)), "mean_a": float(x.mean()), "mean_b": float(y.mean()),
           "ratio": float(x.mean() / y.mean()), "diff": float(x.mean() - y.mean())}
    statistics = {"ratio": lambda u, v, axis: u.mean(axis) / np.maximum(v.mean(axis), 1e-12),
                  "diff": lambda u, v, axis: u.mean(axis) - v.mean(axis)}
    for name, statistic in statistics.items():
        ci = stats.bootstrap((x, y), statistic, paired=True, vectorized=True, n_resamples=resamples,
                             confidence_level=level, method="percentile",
                             rng=np.random.default_rng(seed)).confidence_interval
        out[f"{name}_low"], out[f"{name}_high"] = float(ci.low), float(ci.high)
    return out


def mrr(ranks: Iterable[int | None], k: int | None = None) -> float:
    """Mean reciprocal rank, 1 / (rank + 1); truncated at `k` (MRR@K) when `k` is given."""
    rs = _ranks(ranks)
    return sum(1.0 / (r + 1) for r in rs if r is not None and (k is None or r < k)) / len(rs)


def coverage(recommendations: Iterable[Sequence[Hashable]], catalog: Collection[Hashable], k: int) -> float:
    """Catalog coverage: the share of catalog items that appear in at least one user's top `k`."""
    if not catalog:
        raise ValueError("the catalog is empty")
    shown = {item for recs in recommendations for item in recs[:k] if item in catalog}
    return len(shown) / len(catalog)


def invalid_rate(recommendations: Iterable[Sequence[Hashable]], catalog: Collection[Hashable]) -> float:
    """The share of returned items that are not catalog items (0.0 when nothing was returned)."""
    total = invalid = 0
    for recs in recommendations:
        total += len(recs)
        invalid += sum(1 for item in recs if item not in catalog)
    return invalid / total if total else 0.0


def satisfaction_rate(
    recommendations: Iterable[Sequence[Hashable]],
    predicates: Iterable[Callable[[Hashable], bool]],
    k: int,
) -> float:
    """The share of the first `k` recommended items that satisfy their user's request constraint.

    `predicates[u](item)` says whether `item` meets user u's constraint (e.g. "is a comedy").
    """
    total = ok = 0
    for recs, pred in zip(recommendations, predicates, strict=True):
        top = recs[:k]
        total += len(top)
        ok += sum(1 for item in top if pred(item))
    return ok / total if total else 0.0


def top_k_from_scores(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `k` highest scores per row, best first; `exclude` [B, N] bool masks items out.

    scores: [B, N] float. Deterministic for a given input. Excluded slots that had to be filled
    (fewer than `k` items allowed) come back as -1.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, N], got shape {scores.shape}")
    scores = scores.astype(np.float64, copy=True)
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(k, scores.shape[1])
    # argpartition for speed, then a stable sort of the k survivors
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    # excluded items never come back, even when fewer than k items remain
    if exclude is not None:
        top_scores = np.take_along_axis(scores, top, axis=1)
        top = np.where(np.isneginf(top_scores), -1, top)
    return top
