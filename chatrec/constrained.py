"""Span-switching constrained decoding over the item trie: one core for every engine.

Outside a SID span the model writes free text (code tokens and `<|sid_end|>` are banned there,
so no stray code can appear); after `<|sid_begin|>` only trie children of the span's prefix are
allowed, and at a leaf only `<|sid_end|>`. A per-request item mask (already-seen items, a
category) removes subtrees without rebuilding the trie, so every completed span names an allowed
catalog item: the invalid-item rate is 0 by construction.

The state depends only on the tokens since the last span token, so it is computed from
`prompt + generated` and updated one token at a time. The transformers `LogitsProcessor`
(`serve/engines/transformers_engine.py`) and the vLLM v1 logits processor
(`serve/vllm_processor.py`) are thin wrappers around `SpanState` and `mask_logits_`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatrec.errors import ChatrecError
from chatrec.trie import ItemFilter, ItemTrie

if TYPE_CHECKING:
    import pandas as pd


class FilterError(ChatrecError, ValueError):
    """A per-request item filter is malformed or leaves no item to recommend (HTTP 400)."""


@dataclass(frozen=True)
class SpanTokens:
    """Token ids of the span markers and of every SID code token."""

    sid_begin: int
    sid_end: int
    code_ids: np.ndarray  # [C] int64, ascending: every `<|sL_C|>` token id
    event_range: tuple[int, int] = (0, 0)  # [start, stop) of the events reading's `<|ev_A_i|>` ids, if any

    @classmethod
    def from_token_map(cls, token_map: Any) -> SpanTokens:
        """From a `tokenizer_ext.TokenMap` (`sid_begin`, `sid_end`, `codes: {"L_C": id}`, `event_range`)."""
        codes = np.unique(np.asarray(list(token_map.codes.values()), dtype=np.int64))
        return cls(int(token_map.sid_begin), int(token_map.sid_end), codes,
                   tuple(getattr(token_map, "event_range", (0, 0))))  # type: ignore[arg-type]

    @property
    def banned_in_text(self) -> np.ndarray:
        """Tokens that may not appear outside a span: every code token, `<|sid_end|>` and every event token."""
        events = np.arange(*self.event_range, dtype=np.int64)
        return np.union1d(np.union1d(self.code_ids, [self.sid_end]), events).astype(np.int64)


class ConstraintCore:
    """Everything per catalog version that constrained decoding needs: trie, span ids, item
    metadata for filters. Immutable and shared by all requests (and both engines)."""

    def __init__(self, trie: ItemTrie, span: SpanTokens, catalog: pd.DataFrame | None = None):
        self.trie = trie
        self.span = span
        self.catalog = catalog
        self.banned = span.banned_in_text
        self._categories: set[str] | None = None

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, catalog: pd.DataFrame | None = None) -> ConstraintCore:
        """Load `trie.npz` + `chatrec_tokens.json` from a model folder; the catalog (for category
        filters) defaults to `../catalog.parquet` when the folder sits in a bundle."""
        from tokenizer_ext.token_map import TokenMap

        model_dir = Path(model_dir)
        trie = ItemTrie.load(model_dir / "trie.npz")
        span = SpanTokens.from_token_map(TokenMap.load(model_dir / "chatrec_tokens.json"))
        if catalog is None and (model_dir.parent / "catalog.parquet").exists():
            import pandas as pd

            catalog = pd.read_parquet(model_dir.parent / "catalog.parquet", columns=["item_id", "categories"])
        return cls(trie, span, catalog)

    @property
    def known_categories(self) -> set[str]:
        if self._categories is None:
            cats: set[str] = set()
            if self.catalog is not None and "categories" in self.catalog.columns:
                for row in self.catalog["categories"]:
                    if row is not None:
                        cats.update(str(c) for c in row)
            self._categories = cats
        return self._categories

    def allowed_items(self, exclude_item_ids: Sequence[str] = (),
                      categories: Sequence[str] | None = None,
                      include_item_ids: Sequence[str] | None = None) -> np.ndarray | None:
        """Bool mask over the trie's items for a request's filter, or None when nothing is filtered.

        Raises `FilterError` for an unknown category or when no item passes the filter.
        """
        exclude = [str(x) for x in exclude_item_ids]
        cats = None if categories is None else [str(c) for c in categories]
        if not exclude and cats is None and include_item_ids is None:
            return None
        if cats is not None:
            unknown = sorted(set(cats) - self.known_categories)
            if unknown:
                allowed_list = ", ".join(sorted(self.known_categories)[:20]) or "(catalog has none)"
                raise FilterError(f"unknown categories {unknown}; the catalog has: {allowed_list}")
        flt = ItemFilter(exclude_item_ids=exclude, include_categories=cats, include_item_ids=include_item_ids)
        mask = flt.mask(self.trie.item_ids, self.catalog if flt.needs_catalog else None)
        if not mask.any():
            raise FilterError("no catalog item passes the filter (every item is excluded)")
        return mask

    def new_state(self, prompt_ids: Sequence[int], allowed: np.ndarray | None = None) -> SpanState:
        """A decoding state positioned after `prompt_ids` (which may end inside a span)."""
        state = SpanState(self, allowed)
        state.feed(prompt_ids)
        return state


class SpanState:
    """Per-request decoding state, fed one token (or a batch of tokens) at a time."""

    __slots__ = ("core", "allowed", "node_allowed", "in_span", "prefix", "n_fed", "_cache")

    def __init__(self, core: ConstraintCore, allowed: np.ndarray | None = None):
        self.core = core
        self.allowed = allowed
        # subtree-has-allowed-item mask over trie nodes: computed once per request
        self.node_allowed = None if allowed is None else core.trie.node_allowed(allowed)
        self.in_span = False
        self.prefix: list[int] = []
        self.n_fed = 0
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def feed(self, token_ids: Sequence[int]) -> None:
        """Advance over `token_ids` (prompt or newly generated tokens)."""
        begin, end = self.core.span.sid_begin, self.core.span.sid_end
        for t in token_ids:
            t = int(t)
            if t == begin:
                self.in_span, self.prefix = True, []
            elif t == end:
                self.in_span, self.prefix = False, []
            elif self.in_span:
                self.prefix.append(t)
        self.n_fed += len(token_ids)

    def sync(self, all_ids: Sequence[int]) -> None:
        """Feed whatever part of `all_ids` (a growing sequence) has not been fed yet."""
        if len(all_ids) > self.n_fed:
            self.feed(all_ids[self.n_fed:])

    def allowed_tokens(self) -> np.ndarray | None:
        """Token ids allowed next inside a span (int64), or None in free text."""
        if not self.in_span:
            return None
        key = tuple(self.prefix)
        hit = self._cache.get(key)
        if hit is None:
            trie = self.core.trie
            children = trie.allowed_next(self.prefix, node_allowed=self.node_allowed)
            if len(children):
                hit = children.astype(np.int64)
            else:
                # a complete allowed item: close the span; (never reached otherwise, since
                # every allowed prefix has an allowed item below it)
                hit = np.array([self.core.span.sid_end], dtype=np.int64)
            self._cache[key] = hit
        return hit


def mask_logits_(logits: Any, states: Sequence[SpanState | None], banned: np.ndarray | None = None) -> Any:
    """Mask a `[B, V]` torch logits tensor in place for `states[b]` (None = unconstrained row).

    Span rows keep only their allowed tokens; free-text rows lose `banned` (code tokens and
    `<|sid_end|>`). Returns `logits`.
    """
    import torch

    free_rows: dict[int, list[int]] = {}  # id(core) -> rows in free text
    cores: dict[int, ConstraintCore] = {}
    span_rows: list[int] = []
    span_ids: list[np.ndarray] = []
    width = logits.shape[-1]
    for b, state in enumerate(states):
        if state is None:
            continue
        ids = state.allowed_tokens()
        if ids is None:
            free_rows.setdefault(id(state.core), []).append(b)
            cores[id(state.core)] = state.core
        else:
            span_rows.append(b)
            span_ids.append(ids[ids < width])
    if span_rows:
        # one [S, V] keep-mask for every row inside a span: few large ops, not a few per row
        keep = torch.zeros(len(span_rows), width, dtype=torch.bool, device=logits.device)
        r = np.repeat(np.arange(len(span_rows)), [len(ids) for ids in span_ids])
        keep[torch.from_numpy(r), torch.from_numpy(np.concatenate(span_ids))] = True
        rows_t = torch.tensor(span_rows, device=logits.device)
        logits[rows_t] = logits[rows_t].masked_fill(~keep, float("-inf"))
    for key, rows_list in free_rows.items():
        ban = banned if banned is not None and len(cores) == 1 else cores[key].banned
        ban_t = torch.from_numpy(ban[ban < width]).to(logits.device)
        rows = torch.tensor(rows_list, device=logits.device)
        logits[rows.unsqueeze(1), ban_t.unsqueeze(0)] = float("-inf")  # [F, |ban|]
    return logits


@dataclass(frozen=True)
class SpanCheck:
    """What `check_spans` found in one generated sequence."""

    items: list[int]             # item index of each complete span, in order
    invalid: int                 # complete spans that are no allowed item, plus stray code / end tokens
    open_span: bool              # generation stopped inside a span (length cut-off)


def check_spans(core: ConstraintCore, token_ids: Sequence[int], *, start_in_span: bool = False,
                start_prefix: Sequence[int] = (), allowed: np.ndarray | None = None) -> SpanCheck:
    """Audit generated token ids: every complete span must be an (allowed) item, no stray codes.

    `start_in_span` / `start_prefix`: the prompt ended inside a span, after these code tokens.
    """
    begin, end = core.span.sid_begin, core.span.sid_end
    codes = set(core.span.code_ids.tolist())
    in_span, prefix = start_in_span or bool(start_prefix), [int(t) for t in start_prefix]
    items: list[int] = []
    invalid = 0
    for t in token_ids:
        t = int(t)
        if t == begin:
            if in_span:
                invalid += 1
            in_span, prefix = True, []
        elif t == end:
            if not in_span:
                invalid += 1
            else:
                idx = core.trie.item_index(prefix)
                if idx is None or (allowed is not None and not allowed[idx]):
                    invalid += 1
                else:
                    items.append(idx)
            in_span, prefix = False, []
        elif in_span:
            prefix.append(t)
        elif t in codes:
            invalid += 1
    return SpanCheck(items=items, invalid=invalid, open_span=in_span)
