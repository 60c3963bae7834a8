"""Span-switching constrained decoding over a hand-built trie and vocabulary (no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chatrec.constrained import ConstraintCore, FilterError, SpanTokens, check_spans, mask_logits_
from chatrec.trie import ItemTrie

V = 64
BEGIN, END = 40, 41
# level-0 codes 10..13, level-1 codes 20..23, disambiguation level 30..31
SEQS = np.array([[10, 20, 30], [10, 20, 31], [10, 21, 30], [11, 22, 30], [12, 23, 30]])
IDS = ["a", "b", "c", "d", "e"]
CODES = np.array(sorted({*range(10, 14), *range(20, 24), 30, 31}))


@pytest.fixture
def core() -> ConstraintCore:
    catalog = pd.DataFrame({"item_id": IDS, "title": [f"T{x}" for x in IDS],
                            "categories": [["x"], ["y"], ["x", "y"], ["z"], ["x"]]})
    return ConstraintCore(ItemTrie.from_sequences(SEQS, IDS), SpanTokens(BEGIN, END, CODES), catalog)


def test_free_text_outside_spans_and_trie_inside(core: ConstraintCore) -> None:
    state = core.new_state([1, 2, 3])
    assert state.allowed_tokens() is None
    state.feed([BEGIN])
    assert state.allowed_tokens().tolist() == [10, 11, 12]
    state.feed([10])
    assert state.allowed_tokens().tolist() == [20, 21]
    state.feed([20, 31])
    assert state.allowed_tokens().tolist() == [END]  # leaf: only the span end
    state.feed([END, 5])
    assert state.allowed_tokens() is None


def test_prompt_ending_inside_a_span_starts_constrained(core: ConstraintCore) -> None:
    # a history span in the prompt is closed; the retrieval prompt ends with <|sid_begin|>
    state = core.new_state([1, BEGIN, 10, 20, 30, END, 7, BEGIN])
    assert state.allowed_tokens().tolist() == [10, 11, 12]


def test_filter_excludes_items_and_categories(core: ConstraintCore) -> None:
    allowed = core.allowed_items(exclude_item_ids=["a", "b", "c"])
    state = core.new_state([BEGIN], allowed)
    assert state.allowed_tokens().tolist() == [11, 12]      # subtree 10 holds only excluded items
    allowed = core.allowed_items(categories=["y"])          # b, c
    state = core.new_state([BEGIN, 10], allowed)
    assert state.allowed_tokens().tolist() == [20, 21]
    state.feed([20])
    assert state.allowed_tokens().tolist() == [31]           # a (30) is not in category y
    assert core.allowed_items() is None


def test_bad_filters_raise(core: ConstraintCore) -> None:
    with pytest.raises(FilterError, match="unknown categories"):
        core.allowed_items(categories=["nope"])
    with pytest.raises(FilterError, match="no catalog item"):
        core.allowed_items(exclude_item_ids=IDS)


def test_mask_logits_batch(core: ConstraintCore) -> None:
    torch = pytest.importorskip("torch")
    logits = torch.zeros(3, V)
    states = [core.new_state([BEGIN, 11]), core.new_state([5]), None]
    mask_logits_(logits, states)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [22]
    banned = torch.isinf(logits[1]).nonzero().flatten().tolist()
    assert banned == sorted([*CODES.tolist(), END])
    assert torch.isfinite(logits[2]).all()


def test_random_walks_only_complete_allowed_items(core: ConstraintCore) -> None:
    """Sampling uniformly among allowed tokens never yields an invalid or excluded item."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    allowed = core.allowed_items(exclude_item_ids=["d"])
    for _ in range(200):
        state = core.new_state([1], allowed)
        out: list[int] = []
        for _step in range(12):
            logits = torch.from_numpy(rng.normal(size=(1, V)).astype(np.float32))
            logits[0, BEGIN] += 3.0  # open spans often
            mask_logits_(logits, [state])
            tok = int(torch.argmax(logits[0]))
            out.append(tok)
            state.feed([tok])
        check = check_spans(core, out, allowed=allowed)
        assert check.invalid == 0
        assert all(IDS[i] != "d" for i in check.items)


def test_check_spans_flags_invalid(core: ConstraintCore) -> None:
    bad = check_spans(core, [BEGIN, 13, 20, 30, END, 21, END])
    assert bad.invalid == 3  # unknown span, stray code, stray end
    good = check_spans(core, [BEGIN, 10, 21, 30, END, 3, BEGIN, 11])
    assert good.items == [2] and good.invalid == 0 and good.open_span
