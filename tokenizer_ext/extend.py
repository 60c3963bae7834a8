"""Add span, SID code and action tokens to any HF tokenizer + causal LM and initialise their rows.

New tokens are added as special tokens (no merges across their boundaries; the chat template is
untouched). Embeddings are resized to a multiple of 64 only when the matrix is too small (a model
that already has spare rows, such as Qwen2, keeps its size), so every existing row stays
bit-identical. Tied heads share the input rows; untied heads get their own rows initialised the
same way from the output matrix.

Init methods:
- `mean`: every new row is the mean of the base vocabulary's rows.
- `semantic`: a code token's row is the mean, over the items using that code, of the mean input
  embedding of the item's title tokens; action tokens start from the embedding of their word;
  span tokens and unused codes from the mean.

Re-extension adds only missing tokens: ids already in the tokenizer never move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chatrec import tokens
from chatrec.errors import ConfigError, DataError
from tokenizer_ext.token_map import TokenMap

if TYPE_CHECKING:
    import pandas as pd
    import torch

INIT_METHODS = ("mean", "semantic")
PAD_MULTIPLE = 64


def wanted_tokens(levels: Sequence[int], actions: Sequence[str],
                  used_codes: Sequence[Sequence[int]] | None = None) -> list[str]:
    """Token strings in the order they are added: span markers, codes level by level, actions.

    Level `l` gets codes `0..levels[l]-1` plus every code in `used_codes[l]`.
    """
    out = list(tokens.SPAN_TOKENS)
    n_levels = max(len(levels), len(used_codes or []))
    for level in range(n_levels):
        size = int(levels[level]) if level < len(levels) else 0
        extra = used_codes[level] if used_codes is not None and level < len(used_codes) else []
        out += [tokens.code_token(level, c) for c in sorted(set(range(size)) | {int(c) for c in extra})]
    out += [tokens.action_token(a) for a in actions]
    return out


def extend(
    model: Any,
    tokenizer: Any,
    *,
    levels: Sequence[int],
    actions: Sequence[str],
    init: str = "mean",
    catalog: pd.DataFrame | None = None,
    sids: pd.DataFrame | None = None,
    pad_to_multiple_of: int = PAD_MULTIPLE,
) -> TokenMap:
    """Add missing tokens for `levels` and `actions`, resize, init new rows; return the map.

    `levels[l]` adds codes `0..levels[l]-1` at level `l` (a codebook's size; 0 adds none), and
    every code used in `sids` (`item_id`, `codes`) is added too, so `levels=[0, 0, 0]` with `sids`
    adds exactly the codes in use. `catalog` (`item_id`, `title`) and `sids` are needed for
    `init="semantic"`. Mutates `model` and `tokenizer`.
    """
    import torch
    from transformers import AddedToken

    if init not in INIT_METHODS:
        raise ConfigError(f"`init` must be one of {list(INIT_METHODS)}, got {init!r}")
    if init == "semantic" and (catalog is None or sids is None):
        raise ConfigError("`init='semantic'` needs `catalog` and `sids` (item titles and their codes)")
    levels = [int(s) for s in levels]
    used = _used_codes(sids, len(levels)) if sids is not None and len(sids) else None
    if any(s < 0 for s in levels) or not (levels or used):
        raise ConfigError(f"`levels` must list a code count >= 0 per level, got {levels}")
    if used is None and not all(levels):
        raise ConfigError(f"`levels` must be >= 1 per level when no `sids` are given, got {levels}")

    vocab = tokenizer.get_vocab()
    old_len = len(tokenizer)
    prior = {tid for tok, tid in vocab.items() if _is_chatrec_token(tok)}
    missing = [t for t in wanted_tokens(levels, actions, used) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                         single_word=False) for t in missing], special_tokens=True)
    new_len = len(tokenizer)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in missing]
    if new_ids and sorted(new_ids) != list(range(old_len, new_len)):
        raise DataError(f"tokenizer gave new tokens ids {new_ids[:5]}..., expected {old_len}..{new_len - 1}")

    emb_in = model.get_input_embeddings()
    old_rows = emb_in.weight.shape[0]
    if new_len > old_rows:
        target = -(-new_len // pad_to_multiple_of) * pad_to_multiple_of
        model.resize_token_embeddings(target, mean_resizing=False)
    token_map = _token_map(tokenizer)

    base_ids = torch.tensor([i for i in range(old_len) if i not in prior], dtype=torch.long)
    rows_new = torch.tensor(new_ids, dtype=torch.long)
    emb_in = model.get_input_embeddings()
    pad_rows = torch.arange(max(old_rows, new_len), emb_in.weight.shape[0], dtype=torch.long)
    out = model.get_output_embeddings()
    tied = out is None or out.weight.data_ptr() == emb_in.weight.data_ptr()
    matrices = [emb_in.weight] if tied else [emb_in.weight, out.weight]
    with torch.no_grad():
        for weight in matrices:
            mean = weight[base_ids].mean(dim=0)                         # [H]
            weight[pad_rows] = mean.to(weight.dtype)
            if len(rows_new):
                init_rows = _init_rows(weight, mean, missing, tokenizer, init, catalog, sids)  # [n_new, H]
                weight[rows_new] = init_rows.to(weight.dtype)
        bias = getattr(out, "bias", None) if out is not None else None
        if bias is not None and bias.shape[0] > old_rows:
            bias[old_rows:] = bias[:old_rows].mean()
    return token_map


def _used_codes(sids: pd.DataFrame, n_levels: int) -> list[list[int]]:
    """Distinct codes per level in `sids`."""
    import numpy as np

    codes = np.asarray(sids["codes"].tolist(), dtype=np.int64)  # [N, L]
    if codes.ndim != 2:
        raise DataError("sids `codes` must have the same length for every item")
    if n_levels and n_levels != codes.shape[1]:
        raise DataError(f"`levels` has {n_levels} levels but sids codes have {codes.shape[1]}")
    if codes.min() < 0:
        raise DataError("sids codes must be >= 0")
    return [np.unique(codes[:, level]).tolist() for level in range(codes.shape[1])]


def _is_chatrec_token(tok: str) -> bool:
    return tok in tokens.SPAN_TOKENS or tokens.parse_code_token(tok) is not None or \
        tokens.parse_action_token(tok) is not None


def _token_map(tokenizer: Any) -> TokenMap:
    """Every chatrec token the tokenizer holds (also those added by an earlier extension)."""
    codes: dict[str, int] = {}
    actions: dict[str, int] = {}
    vocab = tokenizer.get_vocab()
    for tok, tid in vocab.items():
        parsed = tokens.parse_code_token(tok)
        if parsed is not None:
            codes[f"{parsed[0]}_{parsed[1]}"] = int(tid)
            continue
        action = tokens.parse_action_token(tok)
        if action is not None:
            actions[action] = int(tid)
    codes = dict(sorted(codes.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("_"))))
    return TokenMap(sid_begin=int(vocab[tokens.SID_BEGIN]), sid_end=int(vocab[tokens.SID_END]),
                    codes=codes, actions=dict(sorted(actions.items())), vocab_size=len(tokenizer))


def _init_rows(weight: torch.Tensor, mean: torch.Tensor, new_tokens: list[str], tokenizer: Any, init: str,
               catalog: pd.DataFrame | None, sids: pd.DataFrame | None) -> torch.Tensor:
    """Rows for `new_tokens` ([n_new, H]) from `weight`'s existing rows."""
    import torch

    rows = mean.unsqueeze(0).repeat(len(new_tokens), 1).float()  # [n_new, H]
    if init == "mean":
        return rows
    assert catalog is not None and sids is not None
    code_vecs = semantic_code_vectors(weight, tokenizer, catalog, sids)
    for i, tok in enumerate(new_tokens):
        parsed = tokens.parse_code_token(tok)
        if parsed is not None and parsed in code_vecs:
            rows[i] = code_vecs[parsed]
            continue
        action = tokens.parse_action_token(tok)
        if action is not None:
            ids = tokenizer(" " + action.replace("_", " "), add_special_tokens=False)["input_ids"]
            if ids:
                rows[i] = weight[torch.tensor(ids)].float().mean(dim=0)
    return rows


def semantic_code_vectors(weight: torch.Tensor, tokenizer: Any, catalog: pd.DataFrame,
                          sids: pd.DataFrame) -> dict[tuple[int, int], torch.Tensor]:
    """(level, code) -> mean over the items using it of their mean title-token row of `weight`."""
    import numpy as np
    import torch

    titles = dict(zip(catalog["item_id"].astype(str), catalog["title"].astype(str), strict=True))
    item_ids = sids["item_id"].astype(str).tolist()
    missing = [i for i in item_ids if i not in titles]
    if missing:
        raise DataError(f"{len(missing)} items in sids are not in the catalog, e.g. {missing[:3]}")
    encoded = tokenizer([titles[i] for i in item_ids], add_special_tokens=False)["input_ids"]
    w = weight.detach().float()
    item_vecs = torch.stack([w[torch.tensor(ids)].mean(dim=0) if ids else w.mean(dim=0)
                             for ids in encoded])                    # [N, H]
    codes = np.asarray(sids["codes"].tolist(), dtype=np.int64)        # [N, L]
    out: dict[tuple[int, int], torch.Tensor] = {}
    for level in range(codes.shape[1]):
        col = codes[:, level]
        for code in np.unique(col):
            idx = torch.from_numpy(np.flatnonzero(col == code))
            out[(level, int(code))] = item_vecs[idx].mean(dim=0)
    return out
