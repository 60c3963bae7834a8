"""The item trie: accepts exactly the catalog's sequences, filters never let a filtered item through."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrec.errors import BundleError, DataError
from chatrec.trie import ItemFilter, ItemTrie
from tests.conftest import make_catalog

BASE = 1000  # code tokens live at BASE + level * 16 + code, like ids appended to an LLM vocab


@st.composite
def catalogs(draw: st.DrawFn) -> np.ndarray:
    """Unique token rows [N, D] drawn from small code alphabets, so prefixes are shared."""
    depth = draw(st.integers(1, 4))
    width = draw(st.integers(1, 4))
    rows = draw(st.lists(st.tuples(*[st.integers(0, width - 1)] * depth), min_size=1, max_size=60,
                         unique=True))
    codes = np.array(rows, dtype=np.int64)
    return BASE + np.arange(depth) * 16 + codes


def build(seqs: np.ndarray) -> ItemTrie:
    return ItemTrie.from_sequences(seqs, [f"i{k}" for k in range(len(seqs))])


def walk(trie: ItemTrie, allowed: np.ndarray | None = None) -> set[tuple[int, ...]]:
    """Every complete sequence reachable by following `allowed_next` from the root."""
    out: set[tuple[int, ...]] = set()
    stack: list[tuple[int, ...]] = [()]
    while stack:
        prefix = stack.pop()
        nxt = trie.allowed_next(list(prefix), allowed)
        if len(prefix) == trie.depth:
            assert len(nxt) == 0
            out.add(prefix)
            continue
        assert len(nxt) > 0, f"dead end at {prefix}"  # every reachable inner node leads to an item
        assert np.all(np.diff(nxt) > 0)
        stack.extend(prefix + (int(t),) for t in nxt)
    return out


@settings(max_examples=60, deadline=None)
@given(catalogs())
def test_trie_accepts_exactly_the_catalog(seqs: np.ndarray) -> None:
    trie = build(seqs)
    assert trie.n_items == len(seqs) and trie.depth == seqs.shape[1]
    assert walk(trie) == {tuple(int(x) for x in r) for r in seqs}
    for k, row in enumerate(seqs):
        assert trie.item_index(row) == k
        assert trie.item_id(row) == f"i{k}"
    assert set(trie.vocab_tokens.tolist()) == set(np.unique(seqs).tolist())


@settings(max_examples=60, deadline=None)
@given(catalogs(), st.data())
def test_non_catalog_sequences_are_rejected(seqs: np.ndarray, data: st.DataObject) -> None:
    trie = build(seqs)
    known = {tuple(r) for r in seqs.tolist()}
    depth = seqs.shape[1]
    probe = data.draw(st.lists(st.integers(BASE - 2, BASE + 16 * depth + 4), min_size=depth, max_size=depth))
    if tuple(probe) not in known:
        assert trie.item_index(probe) is None
        assert trie.item_id(probe) is None
    assert trie.item_index(seqs[0][:-1]) is None  # too short
    assert trie.node_of(list(seqs[0]) + [BASE]) == -1  # too long
    assert trie.node_of([-5]) == -1 and len(trie.allowed_next([10**9])) == 0


@settings(max_examples=80, deadline=None)
@given(catalogs(), st.data())
def test_filtered_item_can_never_be_completed(seqs: np.ndarray, data: st.DataObject) -> None:
    trie = build(seqs)
    allowed = np.array(data.draw(st.lists(st.booleans(), min_size=len(seqs), max_size=len(seqs))))
    reachable = walk(trie, allowed) if allowed.any() else set()
    if not allowed.any():
        assert len(trie.allowed_next([], allowed)) == 0
    assert reachable == {tuple(int(x) for x in r) for r in seqs[allowed]}
    # items_under and counts agree with brute force for every prefix of every item
    node_allowed = trie.node_allowed(allowed)
    counts = trie.allowed_counts(allowed)
    for row in seqs:
        for d in range(seqs.shape[1] + 1):
            under = np.flatnonzero((seqs[:, :d] == row[:d]).all(axis=1))
            node = trie.node_of(row[:d])
            assert sorted(trie.items_under(row[:d]).tolist()) == under.tolist()
            assert sorted(trie.items_under(row[:d], allowed).tolist()) == under[allowed[under]].tolist()
            assert counts[node] == allowed[under].sum()
            assert node_allowed[node] == allowed[under].any()


@settings(max_examples=40, deadline=None)
@given(catalogs(), st.data())
def test_fill_mask_matches_allowed_next(seqs: np.ndarray, data: st.DataObject) -> None:
    trie = build(seqs)
    n, depth = seqs.shape
    vocab = BASE + 16 * depth + 8
    batch = data.draw(st.integers(1, 6))
    prefixes = []
    for _ in range(batch):
        row = seqs[data.draw(st.integers(0, n - 1))]
        cut = data.draw(st.integers(0, depth))
        prefix = row[:cut].tolist()
        if data.draw(st.booleans()) and cut:
            prefix[-1] = data.draw(st.integers(BASE, vocab - 1))  # maybe not a prefix any more
        prefixes.append(prefix)
    allowed = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    per_row = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n),
                                          min_size=batch, max_size=batch)))
    for flt, expect in ((None, lambda b: trie.allowed_next(prefixes[b])),
                        (allowed, lambda b: trie.allowed_next(prefixes[b], allowed)),
                        (per_row, lambda b: trie.allowed_next(prefixes[b], per_row[b]))):
        mask = trie.fill_mask(np.zeros((batch, vocab), dtype=bool), prefixes, flt)
        for b in range(batch):
            assert np.flatnonzero(mask[b]).tolist() == expect(b).tolist()


def test_fill_mask_on_torch_tensor() -> None:
    torch = pytest.importorskip("torch")
    seqs = np.array([[5, 7, 9], [5, 8, 9], [6, 7, 9]])
    trie = build(seqs)
    mask = torch.zeros((3, 12), dtype=torch.bool)
    trie.fill_mask(mask, [[], [5], [5, 8]], np.array([True, False, True]))
    assert [torch.nonzero(r).flatten().tolist() for r in mask] == [[5, 6], [7], []]
    # padded 2-d prefixes work too
    mask2 = np.zeros((2, 12), dtype=bool)
    trie.fill_mask(mask2, np.array([[5, 7], [6, 7]]))
    assert [np.flatnonzero(r).tolist() for r in mask2] == [[9], [9]]


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 8, size=(300, 3)), axis=0)
    seqs = 100 + codes + np.arange(3) * 8
    ids = [f"item-{k}" for k in range(len(seqs))]
    trie = ItemTrie.from_sequences(seqs, ids)
    path = trie.save(tmp_path / "trie.npz")
    back = ItemTrie.load(path)
    assert back.n_items == trie.n_items and back.depth == 3
    for name in ("offsets", "child_tokens", "child_nodes", "span_start", "span_end", "leaf_items"):
        assert np.array_equal(getattr(back, name), getattr(trie, name))
    assert back.item_id(seqs[17]) == "item-17"
    assert back.index_of_id("item-17") == 17 and back.index_of_id("nope") is None
    assert trie.nbytes > 0


def test_duplicate_and_bad_inputs_raise() -> None:
    with pytest.raises(DataError, match="share the token sequence"):
        ItemTrie.from_sequences(np.array([[1, 2], [1, 3], [1, 2]]), ["a", "b", "c"])
    with pytest.raises(DataError, match="item ids"):
        ItemTrie.from_sequences(np.array([[1, 2]]), ["a", "b"])
    with pytest.raises(DataError, match="unique"):
        ItemTrie.from_sequences(np.array([[1, 2], [1, 3]]), ["a", "a"])
    with pytest.raises(DataError, match=r"\[0, 2\*\*31\)"):
        ItemTrie.from_sequences(np.array([[1, -2]]), ["a"])
    with pytest.raises(DataError, match="empty"):
        ItemTrie.from_sequences(np.zeros((0, 3), dtype=int), [])
    mine = np.array([[1, 2], [1, 3]], dtype=np.int32)
    ItemTrie.from_sequences(mine, ["a", "b"])
    assert mine.flags.writeable  # the caller's array is copied, not frozen
    with pytest.raises(BundleError, match="tokenizer extend"):
        ItemTrie.load("/nonexistent/trie.npz")
    trie = ItemTrie.from_sequences(np.array([[1, 2]]), ["a"])
    with pytest.raises(ValueError, match="bool mask"):
        trie.allowed_next([], np.array([1, 0]))


def test_item_filter_with_catalog_categories() -> None:
    catalog = make_catalog(40)
    ids = catalog["item_id"].to_numpy()
    seqs = np.stack([np.arange(40) // 8, np.arange(40) % 8], axis=1) + np.array([0, 10])
    trie = ItemTrie.from_sequences(seqs, ids)
    flt = ItemFilter(exclude_item_ids=["m0", "m3"], include_categories=["Comedy", "Drama"],
                     exclude_categories=["Horror"])
    mask = trie.allowed_mask(flt, catalog)
    cats = dict(zip(catalog["item_id"], catalog["categories"], strict=True))
    for i, item in enumerate(ids):
        expect = (item not in {"m0", "m3"} and bool({"Comedy", "Drama"} & set(cats[item]))
                  and "Horror" not in cats[item])
        assert mask[i] == expect
    assert walk(trie, mask) == {tuple(r) for r in seqs[mask].tolist()}
    only = ItemFilter(include_item_ids=["m5"]).mask(ids)
    assert np.flatnonzero(only).tolist() == [5]
    with pytest.raises(DataError, match="categories"):
        ItemFilter(include_categories=["Drama"]).mask(ids)
