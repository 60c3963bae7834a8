"""The `tokenizer` stage over a bundle: extend a base model, write `BUNDLE/model/` with its trie."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatrec.bundle import Bundle, atomic_path
from chatrec.errors import BundleError, ConfigError, DataError
from tokenizer_ext.extend import INIT_METHODS, PAD_MULTIPLE, extend
from tokenizer_ext.token_map import TokenMap

if TYPE_CHECKING:
    import pandas as pd

    from chatrec.trie import ItemTrie

TOKEN_MAP_FILE = "chatrec_tokens.json"
TRIE_FILE = "trie.npz"


@dataclass
class ExtendConfig:
    """`chatrec tokenizer extend`: base model and how new embedding rows start."""

    base: str = field(default="smollm2-135m-instruct", metadata={
        "help": "Base model: `smollm2-135m-instruct`, an HF id or an HF folder. Ignored when the bundle "
                "already has an extended model/ (it is re-extended so existing ids stay stable)."})
    init: str = field(default="semantic", metadata={
        "help": "Init of new rows: `semantic` (mean title embedding of the items that use each code; the "
                "default, measured better on ML-100k) or `mean` (mean of existing rows)."})
    pad_to_multiple_of: int = field(default=PAD_MULTIPLE, metadata={
        "help": "Embedding rows are padded to a multiple of this when the matrix grows."})

    def __post_init__(self) -> None:
        if self.init not in INIT_METHODS:
            raise ConfigError(f"`init` must be one of {list(INIT_METHODS)}, got {self.init!r}")
        if not self.base:
            raise ConfigError(f"`base` must name a model, got {self.base!r}")
        if self.pad_to_multiple_of < 1:
            raise ConfigError(f"`pad_to_multiple_of` must be >= 1, got {self.pad_to_multiple_of}")


def sid_token_ids(codes: Any, token_map: TokenMap) -> list[int]:
    """Code token ids of one item (level 0 .. last), without the span markers."""
    return token_map.sid_ids([int(c) for c in codes])


def build_trie(sids: pd.DataFrame | Bundle | str | os.PathLike[str], token_map: TokenMap) -> ItemTrie:
    """The item trie over the code token ids of every item in `sids` (a frame, bundle or parquet path)."""
    import numpy as np

    from chatrec.trie import ItemTrie

    frame = _read_sids(sids)
    seqs = np.asarray([sid_token_ids(c, token_map) for c in frame["codes"]], dtype=np.int64)  # [N, D]
    return ItemTrie.from_sequences(seqs, frame["item_id"].astype(str).tolist())


def load_extended(model_dir: str | os.PathLike[str], *, dtype: Any = None, num_layers: int | None = None
                  ) -> tuple[Any, Any, TokenMap]:
    """(model, tokenizer, token_map) of an extended folder (`BUNDLE/model` or an export).

    `num_layers` loads only the bottom decoder layers (the rest are never materialised)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    token_map = TokenMap.load(model_dir / TOKEN_MAP_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    check_token_map(tokenizer, token_map, where=str(model_dir))
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if num_layers is not None:
        config = AutoConfig.from_pretrained(str(model_dir))
        if num_layers < config.num_hidden_layers:
            config.num_hidden_layers = num_layers
            if getattr(config, "layer_types", None):
                config.layer_types = list(config.layer_types)[:num_layers]
            kwargs["config"] = config
    if "config" not in kwargs:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs), tokenizer, token_map
    # The layers above `num_layers` are left in the file by design; transformers would print them as a
    # scary "UNEXPECTED" load report, so check the load ourselves and keep the report for real surprises.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), output_loading_info=True, **kwargs)
        model, info = loaded
    finally:
        hf_logging.set_verbosity(level)
    dropped, keep = re.compile(r"model\.layers\.(\d+)\."), int(num_layers or 0)
    surprises = [k for k in info.get("unexpected_keys", ())
                 if not ((m := dropped.match(k)) and int(m.group(1)) >= keep)]
    surprises += [f"missing {k}" for k in info.get("missing_keys", ())]
    surprises += [f"size mismatch {k}" for k in info.get("mismatched_keys", ())]
    if surprises:
        raise BundleError(f"{model_dir}: loading the bottom {num_layers} layers did not match the checkpoint: "
                          f"{len(surprises)} keys, e.g. {sorted(map(str, surprises))[0]}")
    return model, tokenizer, token_map


def check_token_map(tokenizer: Any, token_map: TokenMap, *, where: str = "tokenizer") -> None:
    """Raise a `BundleError` unless every token of `token_map` has its recorded id in `tokenizer`."""
    vocab = tokenizer.get_vocab()
    bad = [(tok, tid, vocab.get(tok)) for tid, tok in token_map.meanings().items() if vocab.get(tok) != tid]
    if bad:
        tok, want, got = bad[0]
        raise BundleError(f"{where}: {len(bad)} chatrec tokens do not match chatrec_tokens.json, e.g. "
                          f"{tok} is {got}, expected {want}; re-run `chatrec tokenizer extend`")


def level_sizes(bundle: Bundle, sids: pd.DataFrame) -> list[int]:
    """Codebook size per level from `sids/config.json` (0 where unknown; the last level is 0).

    `extend` adds these full codebooks plus every code used in `sids`, so without a config only
    the codes in use get tokens.
    """
    n_levels = len(sids["codes"].iloc[0])
    sizes = [0] * n_levels
    cfg_path = bundle.path("sids", "config.json")
    if cfg_path.exists():
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{cfg_path}: not valid JSON ({exc.msg})") from None
        cfg = cfg.get("config", cfg) if isinstance(cfg, dict) else {}
        book = cfg.get("effective_codebook_size", cfg.get("codebook_sizes", cfg.get("codebook_size")))
        n_book = n_levels - 1  # the last level disambiguates; it has no codebook
        if isinstance(book, int):
            book = [book] * n_book
        if isinstance(book, list) and len(book) >= n_book:
            sizes[:n_book] = [int(b) for b in book[:n_book]]
    return sizes


def extend_bundle(bundle: Bundle | str | os.PathLike[str], base: str = "smollm2-135m-instruct",
                  init: str = "semantic", *, model: Any = None, tokenizer: Any = None,
                  quiet: bool = False) -> TokenMap:
    """Extend a model for `bundle`'s SIDs and actions into `BUNDLE/model/` (atomic) and record the stage.

    Starts from `BUNDLE/model` when it exists (re-extension: only missing tokens are added, every
    existing id stays), else from `model`/`tokenizer` when given, else from `base`.
    """
    import pandas as pd

    from chatrec.models import prepare_model

    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    config = ExtendConfig(base=base, init=init)
    sids = _read_sids(bundle)
    actions = sorted(pd.read_parquet(bundle.require("interactions.parquet"), columns=["action"])["action"]
                     .dropna().astype(str).unique().tolist())
    catalog = pd.read_parquet(bundle.require("catalog.parquet"), columns=["item_id", "title"]) \
        if init == "semantic" else None
    existing = bundle.model_dir / TOKEN_MAP_FILE
    if existing.exists():
        source = str(bundle.model_dir)
        if not quiet and base != ExtendConfig.base:
            print(f"chatrec: {bundle.model_dir} exists; re-extending it (ids stay stable), `base` {base!r} "
                  "is not used. Delete that folder to start from another base.", file=sys.stderr)
        model, tokenizer, _ = load_extended(bundle.model_dir)
    elif model is not None and tokenizer is not None:
        source = getattr(model.config, "name_or_path", "") or "in-memory model"
    else:
        base_dir = prepare_model(base, quiet=quiet)
        source = str(base_dir)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    before = set(tokenizer.get_vocab().values())
    params_before = sum(p.numel() for p in model.parameters())
    if not quiet:
        print(f"chatrec: extending {source} for {len(sids)} items ({init} init)", file=sys.stderr)
    token_map = extend(model, tokenizer, levels=level_sizes(bundle, sids), actions=actions, init=init,
                       catalog=catalog, sids=sids, pad_to_multiple_of=config.pad_to_multiple_of)
    trie = build_trie(sids, token_map)
    with atomic_path(bundle.model_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        token_map.save(tmp / TOKEN_MAP_FILE)
        trie.save(tmp / TRIE_FILE)
    meanings = token_map.meanings()
    added = {tid: tok for tid, tok in meanings.items() if tid not in before}
    inputs = {"sids.parquet": bundle.sids_path, "interactions.parquet": bundle.interactions_path}
    if catalog is not None:
        inputs["catalog.parquet"] = bundle.catalog_path
    bundle.record_stage(
        "tokenizer", config=config, inputs=inputs,
        outputs={"model": bundle.model_dir, "token_map": bundle.model_dir / TOKEN_MAP_FILE,
                 "trie": bundle.model_dir / TRIE_FILE},
        counts={"items": len(sids), "code_tokens": len(token_map.codes), "action_tokens": len(token_map.actions),
                "added_tokens": len(added), "vocab_size": token_map.vocab_size,
                "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
                "parameters_before": params_before,
                "parameters_after": sum(p.numel() for p in model.parameters())},
        extra={"source_model": source, "level_sizes": token_map.level_sizes,
               "tied_embeddings": _is_tied(model),
               "added_tokens": {str(k): v for k, v in added.items()},
               "tokens": {str(k): v for k, v in meanings.items()}},
    )
    return token_map


def _is_tied(model: Any) -> bool:
    out = model.get_output_embeddings()
    return out is None or out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _read_sids(sids: pd.DataFrame | Bundle | str | os.PathLike[str]) -> pd.DataFrame:
    import pandas as pd

    if isinstance(sids, pd.DataFrame):
        frame = sids
    else:
        path = sids.require("sids.parquet") if isinstance(sids, Bundle) else Path(sids)
        if not path.exists():
            raise BundleError(f"{path} does not exist; run `chatrec sids fit` first")
        frame = pd.read_parquet(path)
    for col in ("item_id", "codes"):
        if col not in frame.columns:
            raise DataError(f"sids table has no `{col}` column (columns: {list(frame.columns)})")
    if frame.empty:
        raise DataError("sids table is empty")
    lengths = frame["codes"].map(len)
    if lengths.nunique() != 1:
        raise DataError(f"sids codes must all have the same length, got lengths {sorted(lengths.unique())}")
    if int(lengths.iloc[0]) < 1:
        raise DataError("sids codes are empty")
    return frame
