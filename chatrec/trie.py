"""The item trie: a prefix tree over SID token ids held in flat (CSR) numpy arrays.

Built once per catalog version and shared by every engine (transformers `LogitsProcessor`, the
vLLM logits processor, beam-search retrieval). Each item is one root-to-leaf path of `depth`
token ids (its code tokens; the span's begin/end tokens are not in the trie).

Layout. Items are sorted by their token sequence, and nodes are numbered breadth-first, so

- the children of node `n` are the edges `offsets[n]:offsets[n+1]`, with token ids
  `child_tokens[...]` (ascending) and node ids `child_nodes[...]`;
- the items below node `n` are the sorted items `span_start[n]:span_end[n]`
  (`leaf_items[k]` is the item index of the k-th sorted item), so the number of *allowed*
  items below every node is one cumulative sum over a per-request item mask: filters never
  rebuild the trie;
- nodes of depth `d` are `level_starts[d]:level_starts[d+1]`; leaves are the last level.

Pure numpy; torch masks are accepted by `fill_mask` without importing torch here.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatrec.errors import BundleError, ChatrecError, DataError

if TYPE_CHECKING:
    import pandas as pd

FORMAT_VERSION = 1
_SMALL_BATCH = 4
_ARRAYS = ("offsets", "child_tokens", "child_nodes", "span_start", "span_end", "leaf_items",
           "level_starts", "sequences")


class ItemTrie:
    """A prefix trie over item token sequences, in flat arrays. Build with `from_sequences`."""

    def __init__(
        self,
        *,
        offsets: np.ndarray,
        child_tokens: np.ndarray,
        child_nodes: np.ndarray,
        span_start: np.ndarray,
        span_end: np.ndarray,
        leaf_items: np.ndarray,
        level_starts: np.ndarray,
        sequences: np.ndarray,
        item_ids: np.ndarray,
    ):
        self.offsets = offsets            # [n_nodes + 1] int64: edge range of each node
        self.child_tokens = child_tokens  # [n_edges] int32: token id of each edge (sorted per node)
        self.child_nodes = child_nodes    # [n_edges] int32: node each edge leads to
        self.span_start = span_start      # [n_nodes] int32: first sorted item below the node
        self.span_end = span_end          # [n_nodes] int32: one past the last sorted item below it
        self.leaf_items = leaf_items      # [N] int32: item index of the k-th sorted item
        self.level_starts = level_starts  # [depth + 2] int64: first node id of each depth
        self.sequences = sequences        # [N, depth] int32: token ids of each item (item order)
        self.item_ids = item_ids          # [N] str
        for arr in (*(getattr(self, name) for name in _ARRAYS), self.item_ids):
            arr.setflags(write=False)
        # parent * stride + token, ascending over edges (BFS numbering): vectorised child lookup
        self._stride = int(child_tokens.max()) + 1 if len(child_tokens) else 1
        parents = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
        self._edge_keys = parents * self._stride + child_tokens.astype(np.int64)
        self._id_index: dict[str, int] | None = None
        self._first_tokens: dict[int, int] = {}

    # construction --------------------------------------------------------------------------
    @classmethod
    def from_sequences(cls, token_seqs: np.ndarray | Sequence[Sequence[int]],
                       item_ids: Sequence[str]) -> ItemTrie:
        """Build from one row of `depth` token ids per item; rows must be unique and >= 0."""
        seqs = np.asarray(token_seqs)
        if seqs.ndim != 2 or seqs.shape[1] < 1:
            raise DataError(f"token_seqs must be a 2-d integer array [N, depth], got shape {seqs.shape}")
        if seqs.size and not np.issubdtype(seqs.dtype, np.integer):
            raise DataError(f"token_seqs must hold integer token ids, got dtype {seqs.dtype}")
        n, depth = seqs.shape
        ids = np.asarray([str(i) for i in item_ids]) if not isinstance(item_ids, np.ndarray) \
            else item_ids.astype(str)
        if len(ids) != n:
            raise DataError(f"{n} token sequences but {len(ids)} item ids")
        if n == 0:
            raise DataError("cannot build an item trie from an empty catalog")
        if seqs.min() < 0 or seqs.max() > np.iinfo(np.int32).max:
            raise DataError(f"token ids must lie in [0, 2**31), got range [{seqs.min()}, {seqs.max()}]")
        if len(np.unique(ids)) != n:
            raise DataError("item ids must be unique")
        seqs = seqs.astype(np.int32)  # a copy: the trie's arrays are made read-only

        order = np.lexsort(seqs.T[::-1]).astype(np.int32)  # sort rows lexicographically
        s = seqs[order]                                     # [N, D]
        # new_at[k, d]: sorted row k starts a new node at depth d+1 (its prefix [0..d] differs)
        differs = np.ones((n, depth), dtype=bool)
        differs[1:] = s[1:] != s[:-1]
        new_at = np.logical_or.accumulate(differs, axis=1)
        if not new_at[1:, -1].all():
            dup = int(np.flatnonzero(~new_at[1:, -1])[0]) + 1
            a, b = ids[order[dup - 1]], ids[order[dup]]
            raise DataError(f"items {a!r} and {b!r} share the token sequence {s[dup].tolist()}; "
                            "SIDs must be unique (the disambiguation level makes them so)")

        level_sizes = new_at.sum(axis=0)                    # nodes per depth 1..D
        level_starts = np.concatenate([[0, 1], 1 + np.cumsum(level_sizes)]).astype(np.int64)
        n_nodes = int(level_starts[-1])
        span_start = np.empty(n_nodes, dtype=np.int32)
        span_end = np.empty(n_nodes, dtype=np.int32)
        span_start[0], span_end[0] = 0, n
        child_tokens = np.empty(n_nodes - 1, dtype=np.int32)
        parents = np.empty(n_nodes - 1, dtype=np.int64)
        row_node_prev = np.zeros(n, dtype=np.int64)         # node of each sorted row at the previous depth
        for d in range(depth):
            rows = np.flatnonzero(new_at[:, d])             # first sorted row of each depth-(d+1) node
            first = int(level_starts[d + 1])
            nodes = np.arange(first, first + len(rows))
            span_start[nodes] = rows
            span_end[nodes] = np.append(rows[1:], n)
            child_tokens[nodes - 1] = s[rows, d]
            parents[nodes - 1] = row_node_prev[rows]
            row_node_prev = first + np.cumsum(new_at[:, d]) - 1
        offsets = np.searchsorted(parents, np.arange(n_nodes + 1), side="left").astype(np.int64)
        return cls(offsets=offsets, child_tokens=child_tokens,
                   child_nodes=np.arange(1, n_nodes, dtype=np.int32),
                   span_start=span_start, span_end=span_end, leaf_items=order,
                   level_starts=level_starts, sequences=seqs, item_ids=ids)

    # properties ------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Tokens per item (code levels including the disambiguation level)."""
        return int(self.sequences.shape[1])

    @property
    def n_items(self) -> int:
        return int(self.sequences.shape[0])

    @property
    def n_nodes(self) -> int:
        return len(self.offsets) - 1

    @property
    def vocab_tokens(self) -> np.ndarray:
        """Every token id used by the trie, ascending."""
        return np.unique(self.child_tokens)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (including the lookup keys and item ids)."""
        return int(sum(getattr(self, n).nbytes for n in _ARRAYS) + self.item_ids.nbytes
                   + self._edge_keys.nbytes)

    def __repr__(self) -> str:
        return f"ItemTrie(n_items={self.n_items}, depth={self.depth}, n_nodes={self.n_nodes})"

    def __len__(self) -> int:
        return self.n_items

    # lookups ---------------------------------------------------------------------------------
    def child(self, node: int, token: int) -> int:
        """The child of `node` reached by `token`, or -1."""
        if node < 0 or not 0 <= token < self._stride:
            return -1
        key = node * self._stride + token
        i = int(np.searchsorted(self._edge_keys, key))
        if i < len(self._edge_keys) and self._edge_keys[i] == key:
            return int(self.child_nodes[i])
        return -1

    def node_of(self, prefix: Sequence[int] | np.ndarray) -> int:
        """Node id reached by `prefix` (root = 0 for an empty prefix), or -1 if it is no prefix."""
        node = 0
        for token in prefix:
            node = self.child(node, int(token))
            if node < 0:
                return -1
        return node

    def is_leaf(self, node: int) -> bool:
        return node >= int(self.level_starts[-2])

    def item_index(self, seq: Sequence[int] | np.ndarray) -> int | None:
        """The item whose full token sequence is `seq`, or None."""
        if len(seq) != self.depth:
            return None
        node = self.node_of(seq)
        if node < 0:
            return None
        return int(self.leaf_items[node - int(self.level_starts[-2])])

    def item_id(self, seq: Sequence[int] | np.ndarray) -> str | None:
        """The item id whose full token sequence is `seq`, or None."""
        idx = self.item_index(seq)
        return None if idx is None else str(self.item_ids[idx])

    def first_token(self, level: int) -> int:
        """The smallest token id on `level` (0-based) over all items (kept after its first use):
        on the disambiguation level, the token of index 0."""
        if level not in self._first_tokens:
            self._first_tokens[level] = int(self.sequences[:, level].min())
        return self._first_tokens[level]

    def index_of_id(self, item_id: str) -> int | None:
        """Item index of `item_id`, or None (builds an id index on first use)."""
        if self._id_index is None:
            self._id_index = {str(x): i for i, x in enumerate(self.item_ids)}
        return self._id_index.get(item_id)

    def items_under(self, prefix: Sequence[int] | np.ndarray,
                    allowed: np.ndarray | None = None) -> np.ndarray:
        """Indices of the items whose sequences start with `prefix` (in token order), optionally
        only the allowed ones; empty when `prefix` is not in the trie. Used for fallbacks."""
        node = self.node_of(prefix)
        if node < 0:
            return np.empty(0, dtype=np.int32)
        items = self.leaf_items[self.span_start[node]:self.span_end[node]]
        if allowed is not None:
            items = items[self._item_mask(allowed)[items]]
        return items

    # filtering -------------------------------------------------------------------------------
    def _item_mask(self, allowed: np.ndarray) -> np.ndarray:
        allowed = np.asarray(allowed)
        if allowed.dtype != bool or allowed.shape[-1] != self.n_items:
            raise ValueError(f"`allowed` must be a bool mask over the {self.n_items} items, "
                             f"got dtype {allowed.dtype} shape {allowed.shape}")
        return allowed

    def node_allowed(self, allowed: np.ndarray) -> np.ndarray:
        """Bool mask over nodes: True where the subtree holds at least one allowed item.

        `allowed` is a bool mask over items, `[N]` or `[B, N]` (then the result is `[B, n_nodes]`).
        O(N + n_nodes) per call (one cumulative sum); compute it once per request and pass it as
        `node_allowed=` to `allowed_next` / `fill_mask` on every decoding step.
        """
        allowed = self._item_mask(allowed)
        sorted_allowed = allowed[..., self.leaf_items]                  # [(B,) N]
        csum = np.zeros((*allowed.shape[:-1], self.n_items + 1), dtype=np.int32)
        np.cumsum(sorted_allowed, axis=-1, out=csum[..., 1:])
        return csum[..., self.span_end] > csum[..., self.span_start]   # [(B,) n_nodes]

    def allowed_counts(self, allowed: np.ndarray | None = None) -> np.ndarray:
        """Number of (allowed) items below every node, `[n_nodes]`."""
        if allowed is None:
            return (self.span_end - self.span_start).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(self._item_mask(allowed)[self.leaf_items])])
        return csum[self.span_end] - csum[self.span_start]

    def allowed_mask(self, item_filter: ItemFilter, catalog: pd.DataFrame | None = None) -> np.ndarray:
        """Bool mask over this trie's items for `item_filter` (see `ItemFilter.mask`)."""
        return item_filter.mask(self.item_ids, catalog)

    # next-token constraints --------------------------------------------------------------------
    def allowed_next(self, prefix: Sequence[int] | np.ndarray, allowed: np.ndarray | None = None,
                     *, node_allowed: np.ndarray | None = None) -> np.ndarray:
        """Token ids that may follow `prefix` (ascending).

        Empty when `prefix` is complete (a leaf: the caller allows the span's end token) or is
        not in the trie. With `allowed` (bool mask over items) or its precomputed
        `node_allowed`, children whose subtree holds no allowed item are left out, so a
        filtered item can never be completed.
        """
        node = self.node_of(prefix)
        if node < 0:
            return np.empty(0, dtype=np.int32)
        lo, hi = self.offsets[node], self.offsets[node + 1]
        tokens = self.child_tokens[lo:hi]
        if allowed is not None and node_allowed is None:
            node_allowed = self.node_allowed(allowed)
        if node_allowed is not None:
            tokens = tokens[node_allowed[self.child_nodes[lo:hi]]]
        return tokens

    def nodes_of(self, prefixes: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """`node_of` for a batch of prefixes (ragged lists or a 2-d array), vectorised per depth."""
        if isinstance(prefixes, np.ndarray) and prefixes.ndim == 2:
            tokens = prefixes.astype(np.int64, copy=False)
            lengths = np.full(len(tokens), tokens.shape[1], dtype=np.int64)
        else:
            lengths = np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes))
            width = int(lengths.max()) if len(lengths) else 0
            tokens = np.zeros((len(lengths), width), dtype=np.int64)
            total = int(lengths.sum())
            if total:  # scatter the flattened ragged rows into a padded [B, width] array
                flat = np.fromiter(itertools.chain.from_iterable(prefixes), dtype=np.int64, count=total)
                rows = np.repeat(np.arange(len(lengths)), lengths)
                cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
                tokens[rows, cols] = flat
        nodes = np.zeros(len(lengths), dtype=np.int64)
        nodes[lengths > self.depth] = -1
        for d in range(min(tokens.shape[1], self.depth)):
            active = (lengths > d) & (nodes >= 0)
            if not active.any():
                break
            tok = tokens[:, d]
            keys = nodes * self._stride + tok
            idx = np.minimum(np.searchsorted(self._edge_keys, keys), len(self._edge_keys) - 1)
            found = (self._edge_keys[idx] == keys) & (tok >= 0) & (tok < self._stride)
            nodes = np.where(active, np.where(found, self.child_nodes[idx], -1), nodes)
        return nodes

    def fill_mask(self, mask: Any, prefixes: Sequence[Sequence[int]] | np.ndarray,
                  allowed: np.ndarray | None = None, *, node_allowed: np.ndarray | None = None) -> Any:
        """Set `mask[b, t] = True` for every token id `t` allowed after `prefixes[b]`.

        `mask` is a `[B, V]` bool numpy array or torch tensor (filled in place and returned);
        entries are only ever set to True, so the caller starts from all-False and may add
        other tokens (e.g. the span's end token at a leaf). `allowed` / `node_allowed` are as
        in `allowed_next`, shared by the batch (`[N]`) or per row (`[B, N]` / `[B, n_nodes]`).
        """
        if len(prefixes) != mask.shape[0]:
            raise ValueError(f"mask has {mask.shape[0]} rows but {len(prefixes)} prefixes were given")
        if allowed is not None and node_allowed is None:
            node_allowed = self.node_allowed(allowed)
        if len(prefixes) <= _SMALL_BATCH and isinstance(mask, np.ndarray):
            # a few rows: per-row slices beat the vectorised path's fixed cost (~10 numpy calls)
            for b, prefix in enumerate(prefixes):
                row_allowed = None if node_allowed is None else (
                    node_allowed[b] if node_allowed.ndim == 2 else node_allowed)
                mask[b, self.allowed_next(prefix, node_allowed=row_allowed)] = True
            return mask
        nodes = self.nodes_of(prefixes)                         # [B]
        inner = nodes >= 0
        lo = np.where(inner, self.offsets[np.maximum(nodes, 0)], 0)
        hi = np.where(inner, self.offsets[np.maximum(nodes, 0) + 1], 0)
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return mask
        rows = np.repeat(np.arange(len(nodes)), counts)         # [E]
        starts = np.cumsum(counts) - counts
        edges = np.arange(total) - np.repeat(starts - lo, counts)
        cols = self.child_tokens[edges]
        if node_allowed is not None:
            child = self.child_nodes[edges]
            keep = node_allowed[rows, child] if node_allowed.ndim == 2 else node_allowed[child]
            rows, cols = rows[keep], cols[keep]
        if isinstance(mask, np.ndarray):
            mask[rows, cols] = True
        else:  # a torch tensor (or anything indexable the same way)
            import torch

            dev = mask.device
            mask[torch.from_numpy(rows).to(dev), torch.from_numpy(cols.astype(np.int64)).to(dev)] = True
        return mask

    # persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the arrays and item ids to one `.npz` file (atomic)."""
        from chatrec.bundle import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, format_version=np.array(FORMAT_VERSION),
                     item_ids=self.item_ids, **{n: getattr(self, n) for n in _ARRAYS})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ItemTrie:
        """Read a trie written by `save`."""
        path = Path(path)
        if not path.exists():
            raise BundleError(f"{path} does not exist; build the trie with `chatrec tokenizer extend`")
        with np.load(path, allow_pickle=False) as data:
            version = int(data["format_version"]) if "format_version" in data else -1
            if version != FORMAT_VERSION:
                raise ChatrecError(f"{path}: trie format {version}, expected {FORMAT_VERSION}; rebuild it")
            arrays = {n: data[n] for n in _ARRAYS}
            return cls(item_ids=data["item_ids"], **arrays)


@dataclass
class ItemFilter:
    """A per-request filter over catalog items (no trie rebuild): turns into a bool item mask."""

    exclude_item_ids: Sequence[str] = field(
        default=(), metadata={"help": "Item ids that may not be recommended (e.g. already seen)."})
    include_item_ids: Sequence[str] | None = field(
        default=None, metadata={"help": "If given, only these item ids may be recommended (e.g. in stock)."})
    include_categories: Sequence[str] | None = field(
        default=None, metadata={"help": "If given, only items with at least one of these categories."})
    exclude_categories: Sequence[str] = field(
        default=(), metadata={"help": "Items with any of these categories are left out."})

    @property
    def needs_catalog(self) -> bool:
        return bool(self.include_categories is not None or self.exclude_categories)

    def mask(self, item_ids: Sequence[str] | np.ndarray, catalog: pd.DataFrame | None = None) -> np.ndarray:
        """Bool mask over `item_ids`: True where the item passes the filter.

        `catalog` (columns `item_id`, `categories` list<str>) is needed for category filters;
        items missing from it have no categories.
        """
        ids = [str(i) for i in item_ids]
        keep = np.ones(len(ids), dtype=bool)
        # set lookups, not np.isin over dtype=str arrays: numpy pads every string to the longest
        # one, so a request's single long id would multiply the memory of all the others
        if len(self.exclude_item_ids):
            out = {str(i) for i in self.exclude_item_ids}
            keep &= np.fromiter((i not in out for i in ids), dtype=bool, count=len(ids))
        if self.include_item_ids is not None:
            inc = {str(i) for i in self.include_item_ids}
            keep &= np.fromiter((i in inc for i in ids), dtype=bool, count=len(ids))
        if self.needs_catalog:
            if catalog is None or not {"item_id", "categories"} <= set(catalog.columns):
                raise DataError("category filters need the catalog with columns `item_id` and `categories`")
            pairs = catalog[["item_id", "categories"]].explode("categories")
            cats = pairs["categories"]
            if self.include_categories is not None:
                hit = set(pairs.loc[cats.isin(list(self.include_categories)), "item_id"].astype(str))
                keep &= np.fromiter((i in hit for i in ids), dtype=bool, count=len(ids))
            if self.exclude_categories:
                hit = set(pairs.loc[cats.isin(list(self.exclude_categories)), "item_id"].astype(str))
                keep &= np.fromiter((i not in hit for i in ids), dtype=bool, count=len(ids))
        return keep
