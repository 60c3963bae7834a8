"""Property tests (hypothesis) on random vectors: one unique SID per item, the trie accepts exactly
the SIDs, disambiguation of new items never touches or collides with existing SIDs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatrec.errors import ConfigError
from chatrec.sids import SidConfig, disambiguate, disambiguate_new, fit_sids
from chatrec.trie import ItemTrie

pytest.importorskip("faiss")

VOCAB_BASE = 50_000


def token_rows(codes: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Codes to token ids the way tokenizer extension lays them out: level blocks after the base vocab."""
    offsets = VOCAB_BASE + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return codes + offsets


def walk(trie: ItemTrie, allowed: np.ndarray | None = None) -> set[tuple[int, ...]]:
    out, stack = set(), [()]
    while stack:
        prefix = stack.pop()
        if len(prefix) == trie.depth:
            out.add(prefix)
            continue
        stack.extend(prefix + (int(t),) for t in trie.allowed_next(list(prefix), allowed))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 120), dim=st.integers(2, 16), levels=st.integers(1, 3), k=st.integers(2, 12),
       clusters=st.integers(1, 6), seed=st.integers(0, 10), data=st.data())
def test_every_item_gets_one_unique_sid_and_the_trie_accepts_exactly_them(
        n: int, dim: int, levels: int, k: int, clusters: int, seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    x = (centers[rng.integers(0, clusters, n)] + 0.01 * rng.normal(size=(n, dim))).astype(np.float32)
    if data.draw(st.booleans()):  # exact duplicates force collisions
        x[n // 2:] = x[: n - n // 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = fit_sids(x, SidConfig(levels=levels, codebook_size=k, seed=seed, kmeans_iters=5, progress=False))
    codes = result.codes
    assert codes.shape == (n, levels + 1)                      # exactly one SID per item
    assert len({tuple(r) for r in codes.tolist()}) == n        # unique
    assert (codes[:, :levels] < min(k, n)).all() and (codes >= 0).all()
    sizes = [min(k, n)] * levels + [int(codes[:, -1].max()) + 1]
    assert result.report["level_sizes"] == sizes
    assert result.report["after_disambiguation"]["collision_rate"] == 0.0
    frame = result.frame([f"i{j}" for j in range(n)])
    assert frame["sid"].is_unique and frame["item_id"].is_unique

    seqs = token_rows(codes, sizes)
    trie = ItemTrie.from_sequences(seqs, frame["item_id"].tolist())
    assert walk(trie) == {tuple(r) for r in seqs.tolist()}
    for j in data.draw(st.lists(st.integers(0, n - 1), max_size=5)):
        assert trie.item_id(seqs[j]) == f"i{j}"
    allowed = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assert walk(trie, allowed) == ({tuple(r) for r in seqs[allowed].tolist()} if allowed.any() else set())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=0, max_size=60))
def test_disambiguate_makes_rows_unique_and_leaves_singletons_at_zero(rows: list[tuple[int, int]]) -> None:
    codes = np.array(rows, dtype=np.int64).reshape(-1, 2)
    dis = disambiguate(codes)
    full = np.concatenate([codes, dis[:, None]], axis=1)
    assert len({tuple(r) for r in full.tolist()}) == len(rows)
    for i, r in enumerate(rows):
        same = [j for j, q in enumerate(rows) if q == r]
        assert dis[i] == same.index(i)                         # 0, 1, 2, ... in catalog order


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 5)), min_size=0, max_size=60))
def test_disambiguate_by_popularity_puts_the_most_popular_item_of_a_cell_first(rows: list) -> None:
    codes = np.array([r[:2] for r in rows], dtype=np.int64).reshape(-1, 2)
    counts = np.array([r[2] for r in rows], dtype=np.float64)
    dis = disambiguate(codes, counts)
    assert len({(*r[:2], d) for r, d in zip(rows, dis.tolist(), strict=True)}) == len(rows)
    for i, r in enumerate(rows):
        cell = sorted((j for j, q in enumerate(rows) if q[:2] == r[:2]), key=lambda j: (-rows[j][2], j))
        assert dis[i] == cell.index(i)                         # by count, ties in catalog order


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=0, max_size=40),
       st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=0, max_size=40),
       st.booleans())
def test_disambiguate_new_never_collides_with_existing(old: list, new: list, holes: bool) -> None:
    old_codes = np.array(old, dtype=np.int64).reshape(-1, 2)
    old_dis = disambiguate(old_codes)
    if holes and len(old_dis):  # existing SIDs may have gaps (e.g. after items were removed)
        old_dis = old_dis * 2
    existing = np.concatenate([old_codes, old_dis[:, None]], axis=1)
    new_codes = np.array(new, dtype=np.int64).reshape(-1, 2)
    dis = disambiguate_new(existing, new_codes)
    full_new = np.concatenate([new_codes, dis[:, None]], axis=1)
    everything = [tuple(r) for r in existing.tolist()] + [tuple(r) for r in full_new.tolist()]
    assert len(set(everything)) == len(everything)
    for i, (row, d) in enumerate(zip(new, dis.tolist(), strict=True)):
        rank = [j for j, q in enumerate(new) if q == row].index(i)
        taken = [int(e[2]) for e in existing.tolist() if (e[0], e[1]) == row]
        assert d == (max(taken) + 1 if taken else 0) + rank  # continue after existing, densely
    if len(new) and not len(old):
        assert np.array_equal(dis, disambiguate(new_codes))


def test_same_seed_same_sids_and_seed_matters() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 24)).astype(np.float32)
    cfg = SidConfig(levels=3, codebook_size=16, seed=7, progress=False)
    a, b = fit_sids(x, cfg), fit_sids(x, cfg)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.codebooks, b.codebooks)
    c = fit_sids(x, SidConfig(levels=3, codebook_size=16, seed=8, progress=False))
    assert not np.array_equal(a.codebooks, c.codebooks)


def test_codebook_size_is_clamped_to_the_catalog_with_a_warning() -> None:
    x = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match="codebook_size 256 exceeds the 40 items"):
        result = fit_sids(x, SidConfig(levels=2, codebook_size=256, progress=False))
    assert result.codebook_size == 40 and result.report["requested_codebook_size"] == 256
    assert result.codes[:, :2].max() < 40


def test_report_numbers_are_consistent() -> None:
    x = np.random.default_rng(2).normal(size=(300, 16)).astype(np.float32)
    rep = fit_sids(x, SidConfig(levels=2, codebook_size=8, progress=False)).report
    assert [s["level"] for s in rep["per_level"]] == [0, 1]
    for s in rep["per_level"]:
        assert 0 < s["utilisation"] <= 1 and 1 <= s["perplexity"] <= 8
        assert s["used"] == round(s["utilisation"] * 8)
    assert 0 <= rep["reconstruction"]["relative_error"] < 1  # 2 levels of k-means explain something
    before = rep["before_disambiguation"]
    assert before["collision_rate"] > 0  # 300 items in 64 cells must collide
    assert rep["max_disambiguation_index"] == before["largest_group"] - 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"levels": 0}, "levels"), ({"codebook_size": 1}, "codebook_size"), ({"method": "pq"}, "method"),
    ({"rqvae_epochs": 0}, "rqvae_epochs"), ({"rqvae_lr": 0.0}, "rqvae_lr"),
])
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"`{field}`"):
        SidConfig(**kwargs)


def test_config_round_trips_through_dict() -> None:
    cfg = SidConfig(method="rqvae", rqvae_hidden=(64, 32), seed=3)
    back = SidConfig.from_dict({**cfg.to_dict(), "unknown_future_key": 1})
    assert back == cfg


def test_codebook_size_defaults_to_the_catalog() -> None:
    from chatrec.sids.config import auto_codebook_size

    assert auto_codebook_size(1682, 2) == 64  # 64^2 = 4096 >= 2 x 1682
    assert auto_codebook_size(40, 2) == 16
    assert auto_codebook_size(1_000_000, 3) == 128
    assert auto_codebook_size(10_000_000, 2) == 256  # capped
    assert SidConfig(levels=2).resolved_codebook_size(1682) == 64
    assert SidConfig(levels=2, codebook_size=32).resolved_codebook_size(1682) == 32


def test_a_codebook_too_small_for_the_catalog_is_refused() -> None:
    from chatrec.errors import DataError

    x = np.random.default_rng(0).normal(size=(600, 8)).astype(np.float32)
    with pytest.raises(DataError, match="raise --codebook-size or --levels"):
        fit_sids(x, SidConfig(levels=1, codebook_size=2, progress=False))
