"""The extra SID level that makes every item's code tuple unique.

Items whose learned codes collide get 0, 1, 2, ... on the extra level, most popular first when
a popularity is given (so index 0 means "the likeliest item of its cell" in every cell, a prior
the model learns once instead of an arbitrary index per cell), else in catalog order; items alone
on their codes get 0. New items (cold start) continue after the largest index an
existing item already holds for the same codes, so existing SIDs never change.
"""

from __future__ import annotations

import numpy as np


def _rank_within_groups(groups: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
    """0, 1, 2, ... among the rows sharing each group id: highest `priority` first, then row order."""
    rows = np.arange(len(groups))
    order = (np.argsort(groups, kind="stable") if priority is None
             else np.lexsort((rows, -np.asarray(priority, dtype=np.float64), groups)))
    g = groups[order]
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = np.arange(len(g)) - start
    return rank


def disambiguate(codes: np.ndarray, popularity: np.ndarray | None = None) -> np.ndarray:
    """Disambiguation index `[N]` for learned codes `[N, L]`; `popularity` `[N]` orders collisions."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    if popularity is not None and len(popularity) != len(codes):
        raise ValueError(f"{len(popularity)} popularity values for {len(codes)} items")
    _, groups = np.unique(codes, axis=0, return_inverse=True)
    return _rank_within_groups(groups.reshape(-1), popularity)


def disambiguate_new(existing: np.ndarray, new_codes: np.ndarray) -> np.ndarray:
    """Disambiguation index for `new_codes` `[M, L]` given existing full SIDs `[N, L + 1]`.

    Each new item gets (largest existing index on its codes + 1), or 0 when no existing item has
    those codes, plus its rank among the new items sharing them.
    """
    existing = np.asarray(existing)
    new_codes = np.asarray(new_codes)
    n_levels = new_codes.shape[1]
    if existing.size and existing.shape[1] != n_levels + 1:
        raise ValueError(f"existing SIDs have {existing.shape[1]} levels, expected {n_levels + 1}")
    if len(new_codes) == 0:
        return np.zeros(0, dtype=np.int64)
    both = np.concatenate([existing[:, :n_levels].reshape(-1, n_levels), new_codes]).astype(np.int64)
    _, groups = np.unique(both, axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    base = np.zeros(groups.max() + 1, dtype=np.int64)
    if len(existing):
        np.maximum.at(base, groups[:len(existing)], existing[:, n_levels].astype(np.int64) + 1)
    new_groups = groups[len(existing):]
    return base[new_groups] + _rank_within_groups(new_groups)
