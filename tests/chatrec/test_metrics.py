"""Metrics against hand-computed values on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatrec import metrics

RANKS = [0, 2, None, 9]  # users' target positions (None = not recommended)


def test_target_rank() -> None:
    assert metrics.target_rank(["a", "b", "c"], "c") == 2
    assert metrics.target_rank(["a", "b"], "z") is None
    assert metrics.target_rank([], "a") is None


def test_hit_rate_by_hand() -> None:
    assert metrics.hit_rate(RANKS, 1) == 0.25
    assert metrics.hit_rate(RANKS, 3) == 0.5
    assert metrics.hit_rate(RANKS, 9) == 0.5  # rank 9 is the 10th item
    assert metrics.hit_rate(RANKS, 10) == 0.75


def test_ndcg_by_hand() -> None:
    assert metrics.ndcg(RANKS, 1) == pytest.approx(0.25)
    assert metrics.ndcg(RANKS, 3) == pytest.approx((1 + 0.5) / 4)  # 1/log2(0+2) + 1/log2(2+2)
    assert metrics.ndcg(RANKS, 10) == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 4)


def test_mrr_by_hand() -> None:
    assert metrics.mrr(RANKS) == pytest.approx((1 + 1 / 3 + 1 / 10) / 4)
    assert metrics.mrr(RANKS, k=5) == pytest.approx((1 + 1 / 3) / 4)


def test_coverage_invalid_and_satisfaction_by_hand() -> None:
    recs = [["a", "b"], ["b", "c"]]
    catalog = {"a", "b", "c", "d"}
    assert metrics.coverage(recs, catalog, 1) == 0.5  # a, b
    assert metrics.coverage(recs, catalog, 2) == 0.75  # a, b, c
    assert metrics.invalid_rate([["a", "x"], ["b"]], catalog) == pytest.approx(1 / 3)
    assert metrics.invalid_rate([[], []], catalog) == 0.0
    vowels = [lambda i: i in {"a"}, lambda i: i in {"b", "c"}]
    assert metrics.satisfaction_rate(recs, vowels, 2) == 0.75  # a, (not b), b, c
    assert metrics.satisfaction_rate(recs, vowels, 1) == 1.0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.hit_rate(RANKS, 0)
    with pytest.raises(ValueError, match="zero users"):
        metrics.ndcg([], 10)
    with pytest.raises(ValueError, match="empty"):
        metrics.coverage([["a"]], set(), 1)


def test_top_k_from_scores_order_and_exclusion() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.2, 0.3]])
    assert metrics.top_k_from_scores(scores, 2).tolist() == [[1, 3], [0, 3]]
    exclude = np.array([[False, True, False, False], [True, True, True, False]])
    assert metrics.top_k_from_scores(scores, 2, exclude).tolist() == [[3, 2], [3, -1]]
    assert metrics.top_k_from_scores(scores, 10).shape == (2, 4)


@given(st.lists(st.one_of(st.none(), st.integers(0, 30)), min_size=1, max_size=40), st.integers(1, 20))
def test_metric_invariants(ranks: list[int | None], k: int) -> None:
    hr, nd = metrics.hit_rate(ranks, k), metrics.ndcg(ranks, k)
    assert 0.0 <= nd <= hr <= 1.0
    assert metrics.hit_rate(ranks, k + 1) >= hr
    assert metrics.mrr(ranks, k) <= hr


def test_paired_bootstrap_brackets_the_ratio_and_tightens_with_more_users() -> None:
    rng = np.random.default_rng(0)
    ranks = [int(r) if r < 10 else None for r in rng.geometric(0.05, size=2000) - 1]
    a = metrics.ndcg_gains(ranks, 10)
    assert a.mean() == pytest.approx(metrics.ndcg(ranks, 10))
    same = metrics.paired_bootstrap(a, a)
    assert same["ratio"] == 1.0 and same["diff"] == 0.0 and same["ratio_low"] == same["ratio_high"] == 1.0
    b = np.where(rng.random(len(a)) < 0.5, a, 0.0)               # the same system, half its hits dropped
    small, large = metrics.paired_bootstrap(a[:200], b[:200]), metrics.paired_bootstrap(a, b)
    for r in (small, large):
        assert r["ratio_low"] < r["ratio"] < r["ratio_high"] and r["diff_low"] < r["diff"] < r["diff_high"]
    assert large["ratio_low"] > 1.5                              # a ~2x system is told apart at 2,000 users
    assert large["ratio_high"] - large["ratio_low"] < small["ratio_high"] - small["ratio_low"]
    with pytest.raises(ValueError, match="equal-length"):
        metrics.paired_bootstrap(a, a[:-1])
