"""Beam-search retrieval and ranking over a deterministic fake log-prob function (no model)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from chatrec.errors import ConfigError
from chatrec.retrieval import RetrievalConfig, ValueFunction, rank, split_common_prefix, top_k
from chatrec.trie import ItemTrie

V = 64


def fake_logprobs(calls: list[tuple[int, int]]):
    """Log-softmax of logits seeded by the full sequence: a fixed random 'model'."""

    def fn(prefix, conts, token_ids):
        calls.append((len(prefix), len(conts)))
        out = np.empty((len(conts), len(token_ids)))
        for b, c in enumerate(conts):
            seed = hash(tuple(prefix) + tuple(c)) % (2**32)
            logits = np.random.default_rng(seed).normal(size=V) * 2
            lp = logits - np.logaddexp.reduce(logits)
            out[b] = lp[list(token_ids)]
        return out

    return fn


def random_trie(n: int, seed: int = 0) -> ItemTrie:
    rng = np.random.default_rng(seed)
    seqs = set()
    while len(seqs) < n:
        seqs.add((int(rng.integers(10, 14)), int(rng.integers(20, 24)), int(rng.integers(30, 34))))
    return ItemTrie.from_sequences(np.array(sorted(seqs)), [f"i{k}" for k in range(n)])


def brute_force(trie: ItemTrie, fn, prompt, allowed=None, renormalize=True) -> list[tuple[str, float]]:
    """Every allowed item's score: the sum over levels of its token's log-prob, renormalised over the
    allowed children of its prefix (a masked softmax) unless `renormalize=False`."""
    scores = []
    for idx in range(trie.n_items):
        if allowed is not None and not allowed[idx]:
            continue
        seq = trie.sequences[idx].tolist()
        s = 0.0
        for d in range(len(seq)):
            children = trie.allowed_next(seq[:d], allowed).tolist()
            lp = fn(prompt, [seq[:d]], children)[0]
            s += float(lp[children.index(seq[d])] - (np.logaddexp.reduce(lp) if renormalize else 0.0))
        scores.append((str(trie.item_ids[idx]), s))
    return sorted(scores, key=lambda x: -x[1])


@pytest.mark.parametrize("renormalize", [True, False])
def test_wide_beam_equals_exhaustive_search(renormalize: bool) -> None:
    trie = random_trie(30)
    calls: list = []
    fn = fake_logprobs(calls)
    prompt = [1, 2, 3, 40]
    got = top_k(fn, prompt, trie, RetrievalConfig(k=5, beam_width=64, renormalize=renormalize))
    want = brute_force(trie, fake_logprobs([]), prompt, renormalize=renormalize)[:5]
    assert [g.item_id for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g.score for g in got], [w[1] for w in want], rtol=1e-9)
    assert len(calls) == trie.depth and all(p == len(prompt) for p, _ in calls)  # one batched call per level


def test_results_are_distinct_allowed_and_sorted() -> None:
    trie = random_trie(40, seed=1)
    allowed = np.ones(trie.n_items, dtype=bool)
    allowed[::3] = False
    got = top_k(fake_logprobs([]), [7, 40], trie, RetrievalConfig(k=10), allowed)
    assert len(got) == 10 and len({g.item_id for g in got}) == 10
    assert all(allowed[g.index] for g in got)
    assert [g.score for g in got] == sorted((g.score for g in got), reverse=True)
    assert all(trie.item_index(list(g.tokens)) == g.index for g in got)


def test_fallback_fills_from_shared_prefixes_when_beams_run_short() -> None:
    trie = random_trie(40, seed=2)
    got = top_k(fake_logprobs([]), [7, 40], trie, RetrievalConfig(k=12, beam_width=12))
    assert len(got) == 12  # width 12 may still lose items to narrow subtrees; fallback guarantees k
    exact = [g for g in got if g.exact]
    assert exact and got[: len(exact)] == exact
    # fewer allowed items than k: all of them come back, no more
    allowed = np.zeros(trie.n_items, dtype=bool)
    allowed[[0, 5, 9]] = True
    got = top_k(fake_logprobs([]), [7, 40], trie, RetrievalConfig(k=10), allowed)
    assert sorted(g.index for g in got) == [0, 5, 9]


def test_beam_width_validation() -> None:
    from chatrec.errors import ConfigError

    with pytest.raises(ConfigError, match="beam_width"):
        RetrievalConfig(k=10, beam_width=3)


def test_rank_orders_by_value() -> None:
    actions = {"like": 50, "dislike": 51, "watch": 52}
    prompts = [[1, 2, 3, 10 + i, 9, 9] for i in range(6)]
    ids = [f"c{i}" for i in range(6)]
    ranked = rank(fake_logprobs([]), prompts, ids, actions, ValueFunction.parse("like - 10*dislike"))
    assert sorted(r.item_id for r in ranked) == sorted(ids)
    values = [r.value for r in ranked]
    assert values == sorted(values, reverse=True)
    for r in ranked:
        assert abs(sum(r.probs.values()) - 1) < 1e-9
        assert r.value == pytest.approx(r.probs["like"] - 10 * r.probs["dislike"])


def test_value_function_parse_and_common_prefix() -> None:
    assert ValueFunction.parse("like=1,dislike=-10").weights == {"like": 1.0, "dislike": -10.0}
    assert ValueFunction.parse("2*like-dislike").weights == {"like": 2.0, "dislike": -1.0}
    with pytest.raises(ConfigError, match="needs a number"):
        ValueFunction.parse("like=abc")
    prefix, conts = split_common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]])
    assert prefix == [1] and conts == [[2, 3], [2, 4], [2]]
    assert list(itertools.chain(*conts))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_first_is_the_exact_top_k_with_a_narrow_queue(seed: int) -> None:
    """Best-first equals exhaustive search (where a narrow beam may not), filters included."""
    trie = random_trie(60, seed=seed)
    allowed = np.ones(trie.n_items, dtype=bool)
    allowed[seed::4] = False
    prompt = [5, seed, 40]
    want = brute_force(trie, fake_logprobs([]), prompt, allowed)[:10]
    calls: list = []
    got = top_k(fake_logprobs(calls), prompt, trie, RetrievalConfig(k=10, search="best_first"), allowed)
    assert [g.item_id for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g.score for g in got], [w[1] for w in want], rtol=1e-9)
    assert all(allowed[g.index] for g in got) and all(g.exact for g in got)
    with pytest.raises(ConfigError, match="search"):
        RetrievalConfig(search="greedy")


def test_best_first_runs_out_of_expansions_and_still_fills_k() -> None:
    trie = random_trie(60)
    got = top_k(fake_logprobs([]), [3, 40], trie, RetrievalConfig(k=10, search="best_first", max_expansions=2))
    assert len(got) == 10 and len({g.item_id for g in got}) == 10


def test_a_level_of_single_children_costs_no_model_call() -> None:
    """SIDs whose disambiguation level is one code: renormalised, that level scores 0 without the model."""
    rng = np.random.default_rng(3)
    pairs = sorted({(int(rng.integers(10, 14)), int(rng.integers(20, 24))) for _ in range(40)})
    trie = ItemTrie.from_sequences(np.array([[a, b, 30] for a, b in pairs]), [f"i{k}" for k in range(len(pairs))])
    calls: list = []
    got = top_k(fake_logprobs(calls), [1, 40], trie, RetrievalConfig(k=5, beam_width=64))
    want = brute_force(trie, fake_logprobs([]), [1, 40])[:5]
    assert [g.item_id for g in got] == [w[0] for w in want]
    assert len(calls) == trie.depth - 1
    calls.clear()
    got = top_k(fake_logprobs(calls), [1, 40], trie, RetrievalConfig(k=5, search="best_first"))
    assert [g.item_id for g in got] == [w[0] for w in want]


@pytest.mark.parametrize("search", ["beam", "best_first"])
def test_last_level_prior_asks_the_model_one_level_less_and_scores_by_index(search: str) -> None:
    trie = random_trie(40, seed=3)  # last level: tokens 30..33 = disambiguation index 0..3
    allowed = np.ones(trie.n_items, dtype=bool)
    allowed[::5] = False
    prompt = [1, 2, 40]
    calls: list = []
    got = top_k(fake_logprobs(calls), prompt, trie,
                RetrievalConfig(k=8, beam_width=64, search=search, last_level="prior", prior_exponent=0.7), allowed)
    model = fake_logprobs([])
    want = []
    for idx in np.flatnonzero(allowed):  # exhaustive: model scores on the first levels, the prior on the last
        seq = trie.sequences[idx].tolist()
        s = 0.0
        for d in range(trie.depth):
            children = trie.allowed_next(seq[:d], allowed).tolist()
            if d == trie.depth - 1:
                lp = -0.7 * np.log(np.array(children, dtype=float) - 30 + 1)
            else:
                lp = model(prompt, [seq[:d]], children)[0]
            s += float(lp[children.index(seq[d])] - np.logaddexp.reduce(lp))
        want.append((str(trie.item_ids[idx]), s))
    want.sort(key=lambda w: -w[1])
    assert [g.item_id for g in got] == [w[0] for w in want[:8]]
    np.testing.assert_allclose([g.score for g in got], [w[1] for w in want[:8]], rtol=1e-9)
    plain: list = []
    top_k(fake_logprobs(plain), prompt, trie, RetrievalConfig(k=8, beam_width=64, search=search), allowed)
    assert sum(n for _, n in calls) < sum(n for _, n in plain)  # the last level's prefixes were not asked
    if search == "beam":
        assert (len(calls), len(plain)) == (trie.depth - 1, trie.depth)


def test_last_level_prior_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="last_level"):
        RetrievalConfig(last_level="popular")
    with pytest.raises(ConfigError, match="prior_exponent"):
        RetrievalConfig(last_level="prior", prior_exponent=-1)
    with pytest.raises(ConfigError, match="renormalize"):
        RetrievalConfig(last_level="prior", renormalize=False)
