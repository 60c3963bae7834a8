"""Each baseline on hand-checkable data: shapes, exclusion, what it learns, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from chatrec.baselines import (
    BASELINES,
    ItemKNN,
    ItemKNNConfig,
    NotFittedError,
    Popularity,
    RandomBaseline,
    SASRec,
    SASRecConfig,
    make_baseline,
)
from chatrec.baselines.sasrec import _training_windows
from chatrec.errors import ChatrecError, ConfigError

TINY_SASREC = SASRecConfig(hidden=16, max_len=8, epochs=20, lr=1e-2, dropout=0.0, batch_size=64)


def test_popularity_ranks_by_count_and_excludes() -> None:
    pop = Popularity().fit([[0, 1, 1], [1, 2], [1, 2, 3]], n_items=5)
    assert pop.score([[0], [4]]).shape == (2, 5)
    assert pop.recommend([], 3) == [1, 2, 0]  # counts 4, 2, 1 (0 and 3 tie at 1; 0 first)
    assert pop.recommend([1], 2, exclude={1}) == [2, 0]


def test_random_is_seeded() -> None:
    a = RandomBaseline(seed=3).fit([[0, 1]], 10).recommend([], 5)
    b = RandomBaseline(seed=3).fit([[0, 1]], 10).recommend([], 5)
    assert a == b and len(set(a)) == 5


def test_itemknn_recommends_co_occurring_items() -> None:
    # items 0,1 always together; 2,3 together; 4 alone
    seqs = [[0, 1], [0, 1], [1, 0], [2, 3], [3, 2], [4]]
    knn = ItemKNN(ItemKNNConfig(shrink=0.0)).fit(seqs, n_items=5)
    assert knn.recommend([0], 1, exclude={0}) == [1]
    assert knn.recommend([2], 1, exclude={2}) == [3]
    scores = knn.score([[0]])
    assert scores[0, 1] == pytest.approx(1.0)  # cosine of identical columns
    assert scores[0, 2] == 0.0


def test_itemknn_recency_weights_the_latest_item() -> None:
    seqs = [[0, 1], [0, 1], [2, 3], [2, 3]]
    knn = ItemKNN(ItemKNNConfig(recency_decay=0.5)).fit(seqs, n_items=4)
    assert knn.recommend([0, 2], 1, exclude={0, 2}) == [3]  # 2 is the newest
    assert knn.recommend([2, 0], 1, exclude={0, 2}) == [1]


@pytest.mark.parametrize("negatives", [None, 4])
def test_sasrec_learns_a_cycle(negatives: int | None) -> None:
    """Every user walks 0 -> 1 -> ... -> 9 -> 0: the next item is fully determined by the last.

    Learnt with the full softmax and with a sampled softmax over 4 shared negatives.
    """
    n = 10
    seqs = [[(start + i) % n for i in range(12)] for start in range(n)] * 3
    cfg = dataclasses.replace(TINY_SASREC, negatives=negatives, epochs=20 if negatives is None else 40)
    model = SASRec(cfg, progress=False).fit(seqs, n_items=n)
    histories = [[3, 4, 5], [7, 8], [9]]
    recs = model.recommend_batch(histories, 1)
    assert [r[0] for r in recs] == [6, 9, 0]
    assert model.score(histories).shape == (3, n)


def test_sasrec_early_stopping_keeps_history() -> None:
    n = 6
    seqs = [[(s + i) % n for i in range(8)] for s in range(n)] * 2
    valid = ([[0, 1, 2], [3, 4]], [3, 5])
    cfg = SASRecConfig(hidden=8, max_len=6, epochs=6, eval_every=2, patience=1, lr=1e-2)
    model = SASRec(cfg, progress=False).fit(seqs, n, valid=valid)
    checks = [h for h in model.history if "valid_ndcg@10" in h]
    assert checks and all(0.0 <= h["valid_ndcg@10"] <= 1.0 for h in checks)


def test_sasrec_time_budget_stops_after_the_epoch_and_validates_it() -> None:
    n = 6
    seqs = [[(s + i) % n for i in range(8)] for s in range(n)] * 2
    valid = ([[0, 1, 2], [3, 4]], [3, 5])
    cfg = SASRecConfig(hidden=8, max_len=6, epochs=50, eval_every=10, lr=1e-2, max_minutes=1e-9)
    model = SASRec(cfg, progress=False).fit(seqs, n, valid=valid)
    assert [h["epoch"] for h in model.history] == [1.0] and "valid_ndcg@10" in model.history[0]
    with pytest.raises(ConfigError, match="`max_minutes` must be > 0 or None"):
        SASRecConfig(max_minutes=0)


def test_training_windows_cover_every_transition_once() -> None:
    x, y = _training_windows([[0, 1, 2, 3, 4, 5, 6]], max_len=3)
    pairs = {(int(a) - 1, int(b)) for xa, ya in zip(x, y, strict=True) for a, b in zip(xa, ya, strict=True) if b >= 0}
    assert pairs == {(i, i + 1) for i in range(6)}
    assert int((y >= 0).sum()) == 6


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_fits_scores_and_excludes(name: str) -> None:
    model = make_baseline(name, progress=False)
    if isinstance(model, SASRec):
        model.cfg = TINY_SASREC
    with pytest.raises(NotFittedError):
        model.score([[0]])
    model.fit([[0, 1, 2], [2, 3, 4], [4, 5, 0]], n_items=6)
    scores = model.score([[0, 1], []])
    assert scores.shape == (2, 6) and np.isfinite(scores).all()
    recs = model.recommend_batch([[0, 1], [2]], 4, exclude=[{0, 1}, {2}])
    assert all(len(r) == 4 and len(set(r)) == 4 for r in recs)
    assert not {0, 1} & set(recs[0]) and 2 not in recs[1]


def test_bad_input_and_config() -> None:
    with pytest.raises(ChatrecError, match="outside 0..2"):
        Popularity().fit([[0, 3]], n_items=3)
    with pytest.raises(ConfigError, match="`hidden` .* divisible by `heads`"):
        SASRecConfig(hidden=10, heads=3)
    with pytest.raises(ConfigError, match="`dropout` must be in \\[0, 1\\), got 1.5"):
        SASRecConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="`recency_decay`"):
        ItemKNNConfig(recency_decay=0.0)
    with pytest.raises(ConfigError, match="unknown baseline 'bpr'"):
        make_baseline("bpr")
