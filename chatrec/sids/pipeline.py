"""Fit semantic IDs, write them into a bundle, and assign SIDs to new items with frozen codebooks."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from chatrec.bundle import Bundle, atomic_path, atomic_write_json
from chatrec.embeddings import embed_texts
from chatrec.errors import BundleError, DataError
from chatrec.sids.config import SidConfig
from chatrec.sids.disambiguation import disambiguate, disambiguate_new
from chatrec.sids.report import build_report, collision_stats
from chatrec.tokens import sid_string

BundleLike = Bundle | str | os.PathLike[str]
FORMAT_VERSION = 1
SIDS_DIR = "sids"
MAX_DISAMBIGUATION = 256  # codes of the last level: a larger group means the codebook does not fit the catalog


@dataclass
class SidResult:
    """Learned SIDs: `codes` `[N, levels + 1]` (last column = disambiguation level)."""

    codes: np.ndarray
    codebooks: np.ndarray                      # [levels, K, d] (rqvae: in latent space)
    config: SidConfig
    report: dict[str, Any]
    model_state: dict[str, np.ndarray] = field(default_factory=dict)  # rqvae weights
    item_ids: list[str] | None = None

    @property
    def codebook_size(self) -> int:
        return int(self.codebooks.shape[1])

    def frame(self, item_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """`item_id`, `codes` (list of ints), `sid` (the token span)."""
        ids = list(item_ids if item_ids is not None else (self.item_ids or range(len(self.codes))))
        return sids_frame(ids, self.codes)


def sids_frame(item_ids: Sequence[Any], codes: np.ndarray) -> pd.DataFrame:
    rows = [[int(c) for c in row] for row in np.asarray(codes)]
    return pd.DataFrame({"item_id": [str(i) for i in item_ids], "codes": rows,
                         "sid": [sid_string(r) for r in rows]})


def _bundle(bundle: BundleLike) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else Bundle(bundle)


def _as_vectors(texts_or_embeddings: Sequence[str] | np.ndarray, config: SidConfig) -> np.ndarray:
    if isinstance(texts_or_embeddings, np.ndarray) and texts_or_embeddings.dtype.kind in "fiu":
        x = texts_or_embeddings
        if x.ndim != 2:
            raise DataError(f"embeddings must be a 2-d array [N, dim], got shape {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)
    return embed_texts([str(t) for t in texts_or_embeddings], config.embedding)


def _encode(x: np.ndarray, config: SidConfig, codebooks: np.ndarray,
            state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Learned codes `[N, levels]` and reconstructions `[N, dim]` with frozen codebooks."""
    if config.method == "rqvae":
        from chatrec.sids.rqvae import rqvae_encode

        return rqvae_encode(x, state, config)
    from chatrec.sids.rqkmeans import encode_residual

    return encode_residual(x, codebooks)


def cold_mask(x: np.ndarray, text_dim: int) -> np.ndarray:
    """Items whose collaborative part (dimensions from `text_dim` on) is all zero: nobody interacted with them."""
    return ~np.any(x[:, text_dim:], axis=1)


def impute_collaborative(x: np.ndarray, text_dim: int, codebooks: np.ndarray) -> np.ndarray:
    """`x` with every all-zero collaborative part (dimensions from `text_dim` on: an item nobody
    has interacted with yet) replaced by that of the level-0 codeword nearest in the text dimensions.

    Residual k-means codebooks only. Without this a heavily weighted collaborative part puts every
    cold item into the one cell nearest to zero, whatever its text says.
    """
    from chatrec.sids.rqkmeans import encode_residual

    cold = np.flatnonzero(cold_mask(x, text_dim))
    if not len(cold):
        return x
    x = x.copy()
    nearest, _ = encode_residual(x[cold, :text_dim], codebooks[:1, :, :text_dim])  # [C, 1]
    x[cold, text_dim:] = codebooks[0][nearest[:, 0], text_dim:]
    return x


def fit_sids(texts_or_embeddings: Sequence[str] | np.ndarray, config: SidConfig | None = None, *,
             item_ids: Sequence[str] | None = None, popularity: np.ndarray | None = None,
             text_dim: int | None = None) -> SidResult:
    """Learn SIDs for items given as texts (embedded with `config.embedding`) or as vectors `[N, d]`.

    `popularity` `[N]` (e.g. training interaction counts) orders items that share learned codes on
    the disambiguation level, most popular first; without it they keep catalog order. `text_dim`:
    the vectors are text then collaborative dimensions; with residual k-means the codebooks are
    learned on every item or only on those with a collaborative part (`codebooks_from`), and the
    others are encoded with one imputed (`impute_cold`, `impute_collaborative`), as new items are
    in `assign_bundle`.
    """
    config = config or SidConfig()
    t0 = time.perf_counter()
    x = _as_vectors(texts_or_embeddings, config)
    n = len(x)
    if n == 0:
        raise DataError("no items to fit semantic IDs on")
    if not np.isfinite(x).all():
        raise DataError("embeddings contain NaN or infinite values")
    t_embed = time.perf_counter()
    wanted = config.resolved_codebook_size(n)
    k = min(wanted, n)
    if k < wanted:
        warnings.warn(f"codebook_size {wanted} exceeds the {n} items; using {k} codes per "
                      "level (pass --codebook-size to choose)", UserWarning, stacklevel=2)
    state: dict[str, np.ndarray] = {}
    cold = None if text_dim is None else cold_mask(x, text_dim)
    if config.method == "rqvae":
        from chatrec.sids.rqvae import fit_rqvae

        state = fit_rqvae(x, config, k)
        codebooks = state["rqvae.codebooks"]
    else:
        from chatrec.sids.rqkmeans import fit_rqkmeans

        warm = np.ones(n, dtype=bool) if cold is None or config.codebooks_from == "all" else ~cold
        if warm.sum() < k:  # too few items with interactions to learn the codebooks from
            warm[:] = True
        codebooks = fit_rqkmeans(x[warm], config.levels, k, seed=config.seed, iters=config.kmeans_iters,
                                 progress=config.progress)
        if text_dim is not None and config.impute_cold:
            x = impute_collaborative(x, text_dim, codebooks)
    t_fit = time.perf_counter()
    learned, recon = _encode(x, config, codebooks, state)
    codes = np.concatenate([learned, disambiguate(learned, popularity)[:, None]], axis=1)
    largest = int(codes[:, -1].max()) + 1
    if largest > MAX_DISAMBIGUATION:
        raise DataError(f"{k}^{config.levels} codes cannot tell {n:,} items apart: {largest} items share one code "
                        f"tuple (the disambiguation level holds at most {MAX_DISAMBIGUATION}); raise --codebook-size "
                        "or --levels, or pass --codebook-size 0 to size it to the catalog")
    t_end = time.perf_counter()
    report = build_report(x=x, recon=recon, codes=codes, method=config.method, codebook_size=k,
                          requested_codebook_size=wanted,
                          seconds={"embed": t_embed - t0, "fit": t_fit - t_embed,
                                   "encode": t_end - t_fit, "total": t_end - t0})
    if cold is not None:
        report["cold_items"] = int(cold.sum())
    return SidResult(codes=codes, codebooks=codebooks, config=config, report=report, model_state=state,
                     item_ids=[str(i) for i in item_ids] if item_ids is not None else None)


# bundle I/O -----------------------------------------------------------------------------------
def _read_catalog_texts(bundle: Bundle) -> pd.DataFrame:
    path = bundle.require("catalog.parquet")
    df = pd.read_parquet(path)
    return _items_frame(df, str(path))


def _items_frame(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """`item_id` and `text` (falling back to `title`) as strings; checks ids and emptiness."""
    if "item_id" not in df.columns:
        raise DataError(f"{source}: missing column `item_id`")
    if "text" not in df.columns and "title" not in df.columns:
        raise DataError(f"{source}: missing column `text` (or `title`)")
    if df.empty:
        raise DataError(f"{source}: no items")
    out = pd.DataFrame({"item_id": df["item_id"].astype(str)})
    text = df["text"] if "text" in df.columns else df["title"]
    if "title" in df.columns:
        text = text.where(text.notna() & (text.astype(str).str.strip() != ""), df["title"])
    missing = text.isna() | (text.astype(str).str.strip() == "")
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(f"{source}: row {row}, field `text`: empty item text")
    out["text"] = text.astype(str)
    dup = out["item_id"].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{source}: row {row}, field `item_id`: duplicate item id {out['item_id'].iloc[row]!r}")
    return out


def fit_bundle(bundle: BundleLike, config: SidConfig | None = None, *,
               embeddings: np.ndarray | None = None) -> SidResult:
    """Fit SIDs on the bundle's `catalog.parquet`; write `sids.parquet` and `sids/`.

    `embeddings` (`[N, d]`, rows in catalog order) replaces embedding the `text` column; a bundle
    fitted that way needs embeddings for new items too (`assign_bundle(..., embeddings=)`).
    """
    b = _bundle(bundle)
    config = config or SidConfig()
    items = _read_catalog_texts(b)
    if embeddings is not None and len(embeddings) != len(items):
        raise DataError(f"{len(embeddings)} embeddings for {len(items)} catalog items")
    source: Sequence[str] | np.ndarray = embeddings if embeddings is not None else items["text"].tolist()
    kind = "given" if embeddings is not None else "texts"
    wants_log = config.collaborative_weight > 0 or config.disambiguation == "popularity"
    if wants_log and not b.interactions_path.exists():
        warnings.warn(f"{b.interactions_path} does not exist: fitting SIDs on text alone (no collaborative part, "
                      "collisions in catalog order)", UserWarning, stacklevel=2)
        config = replace(config, collaborative_weight=0.0, disambiguation="catalog")
        wants_log = False
    item_ids = items["item_id"].tolist()
    train = training_matrix(b, item_ids) if wants_log else None
    text_dim: int | None = None
    if config.collaborative_weight > 0:
        text = _unit(_as_vectors(source, config))
        text_dim = int(text.shape[1])
        collab = collaborative_vectors(train, config.collaborative_dim)
        source = np.concatenate([text, config.collaborative_weight * collab], axis=1).astype(np.float32)
        kind += "+collaborative"
    popularity = None
    if train is not None and config.disambiguation == "popularity":
        popularity = np.asarray(train.sum(axis=1)).ravel()
    result = fit_sids(source, config, item_ids=item_ids, popularity=popularity, text_dim=text_dim)
    result.report["embeddings"] = kind
    write_sids(b, result)
    return result


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def training_matrix(bundle: Bundle, item_ids: Sequence[str]) -> Any:
    """Binary item x user CSR matrix of the training split (repeated events count once).

    The split is `chatrec eval`'s leave-last-out split (each held-out user's events before their
    validation target), so nothing derived from it encodes a held-out interaction.
    """
    from scipy.sparse import csr_matrix

    from chatrec.evaluation import leave_last_out

    interactions = pd.read_parquet(bundle.require("interactions.parquet"))
    train = leave_last_out(interactions, known_items=item_ids).train
    index = {str(i): n for n, i in enumerate(item_ids)}
    users = {u: n for n, u in enumerate(train["user_id"].astype(str).unique())}
    rows = train["item_id"].astype(str).map(index).to_numpy()
    cols = train["user_id"].astype(str).map(users).to_numpy()
    matrix = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(item_ids), len(users)))
    matrix.data[:] = 1.0
    return matrix


def collaborative_vectors(matrix: Any, dim: int) -> np.ndarray:
    """Unit item vectors `[N, dim]` from a truncated SVD of the item x user `matrix` (`training_matrix`).

    Items without training events get zero vectors.
    """
    from scipy.sparse.linalg import svds

    k = max(1, min(dim, min(matrix.shape) - 1))
    u, s, _ = svds(matrix, k=k, random_state=0)
    vectors = u * s  # [N, k]
    return _unit(vectors.astype(np.float32)) * (np.asarray(matrix.sum(axis=1)).ravel() > 0)[:, None]


def write_sids(bundle: Bundle, result: SidResult) -> None:
    """Write `sids.parquet` and `sids/{codebooks.npz,config.json,report.json}` (atomic) + manifest."""
    if result.item_ids is None:
        raise ValueError("SidResult.item_ids is needed to write a bundle")
    frame = result.frame()
    bundle.ensure()
    with atomic_path(bundle.path(SIDS_DIR)) as tmp:
        tmp.mkdir()
        with (tmp / "codebooks.npz").open("wb") as fh:
            arrays: dict[str, Any] = {"codebooks": result.codebooks,
                                      "format_version": np.array(FORMAT_VERSION), **result.model_state}
            np.savez(fh, **arrays)
        atomic_write_json(tmp / "config.json", {**result.config.to_dict(),
                                                "effective_codebook_size": result.codebook_size,
                                                "embedding_dim": result.report["embedding_dim"],
                                                "embeddings": result.report.get("embeddings", "texts")})
        atomic_write_json(tmp / "report.json", result.report)
    with atomic_path(bundle.sids_path) as tmp:
        frame.to_parquet(tmp, index=False)
    bundle.record_stage(
        "sids", config=result.config,
        inputs={"catalog": bundle.catalog_path} if bundle.catalog_path.exists() else {},
        outputs={"sids": bundle.sids_path, "codebooks": bundle.path(SIDS_DIR, "codebooks.npz"),
                 "report": bundle.path(SIDS_DIR, "report.json")},
        counts={"items": len(frame), "levels": result.config.levels,
                "codebook_size": result.codebook_size,
                "max_disambiguation_index": result.report["max_disambiguation_index"]})


def load_sids(bundle: BundleLike) -> pd.DataFrame:
    """The bundle's `sids.parquet`: `item_id`, `codes` (list of ints), `sid`."""
    path = _bundle(bundle).require("sids.parquet")
    df = pd.read_parquet(path)
    df["codes"] = [[int(c) for c in row] for row in df["codes"]]
    return df


def codes_matrix(sids: pd.DataFrame) -> np.ndarray:
    """The `codes` column as an int64 array `[N, levels + 1]`."""
    if sids.empty:
        return np.zeros((0, 0), dtype=np.int64)
    return np.asarray(sids["codes"].tolist(), dtype=np.int64)


def load_sid_model(bundle: BundleLike) -> tuple[SidConfig, np.ndarray, dict[str, np.ndarray]]:
    """The stored config, codebooks and (rqvae) weights of a fitted bundle (`given_embeddings`
    in the state dict marks a bundle fitted on supplied vectors rather than texts)."""
    b = _bundle(bundle)
    cfg_path, books_path = b.path(SIDS_DIR, "config.json"), b.path(SIDS_DIR, "codebooks.npz")
    for p in (cfg_path, books_path):
        if not p.exists():
            raise BundleError(f"{p} does not exist; run `chatrec sids fit --bundle {b.root}` first")
    raw = json.loads(cfg_path.read_text())
    config = SidConfig.from_dict(raw)
    with np.load(books_path, allow_pickle=False) as data:
        codebooks = data["codebooks"]
        state = {k: data[k] for k in data.files if k.startswith("rqvae.")}
    if raw.get("embeddings") == "given":
        state["given_embeddings"] = np.array(True)
    return config, codebooks, state


def level_sizes(bundle: BundleLike) -> list[int]:
    """Codes per SID level for tokenizer extension: the codebook size per learned level, then
    (largest disambiguation index + 1) over the bundle's current `sids.parquet`."""
    _, codebooks, _ = load_sid_model(bundle)
    codes = codes_matrix(load_sids(bundle))
    return [int(codebooks.shape[1])] * int(codebooks.shape[0]) + [int(codes[:, -1].max()) + 1]


def assign_bundle(bundle: BundleLike, new_items: pd.DataFrame, *, update_catalog: bool = True,
                  embeddings: np.ndarray | None = None) -> pd.DataFrame:
    """Give SIDs to items not yet in the bundle with the frozen codebooks (cold start).

    Existing SIDs never change; items already present are skipped. New rows are appended to
    `sids.parquet` (and to `catalog.parquet` when `update_catalog`). Returns the new rows.
    `embeddings` (`[len(new_items), d]`) replaces embedding the items' text.
    """
    b = _bundle(bundle)
    b.require("sids.parquet")
    config, codebooks, state = load_sid_model(b)
    existing = load_sids(b)
    items = _items_frame(new_items, "new items")
    known = set(existing["item_id"])
    is_new = ~items["item_id"].isin(known).to_numpy()
    fresh = items[is_new].reset_index(drop=True)
    if embeddings is not None and len(embeddings) != len(items):
        raise DataError(f"{len(embeddings)} embeddings for {len(items)} new items")
    if embeddings is None and "given_embeddings" in state:
        raise DataError("this bundle's SIDs were fitted on supplied embeddings, not texts; "
                        "pass the new items' embeddings")
    if fresh.empty:
        return sids_frame([], np.zeros((0, config.levels + 1), dtype=np.int64))
    t0 = time.perf_counter()
    if embeddings is not None:
        x = np.ascontiguousarray(np.asarray(embeddings)[is_new], dtype=np.float32)
    else:
        x = embed_texts(fresh["text"].tolist(), config.embedding)
    dim = codebooks.shape[2] if config.method == "rqkmeans" else state["rqvae.encoder.0.weight"].shape[1]
    if config.collaborative_weight > 0 and x.shape[1] < dim:  # no interactions yet: impute the collaborative part
        text_dim = x.shape[1]
        x = np.concatenate([_unit(x), np.zeros((len(x), dim - text_dim), dtype=np.float32)], axis=1)
        if config.method == "rqkmeans" and config.impute_cold:
            x = impute_collaborative(x, text_dim, codebooks)
    if x.shape[1] != dim:
        raise DataError(f"new items embed to {x.shape[1]} dimensions but the SIDs were fitted on {dim}")
    learned, _ = _encode(x, config, codebooks, state)
    old_codes = codes_matrix(existing)
    dis = disambiguate_new(old_codes, learned)
    codes = np.concatenate([learned, dis[:, None]], axis=1)
    rows = sids_frame(fresh["item_id"].tolist(), codes)
    if update_catalog:
        _append_catalog(b, new_items[new_items["item_id"].astype(str).isin(set(fresh["item_id"]))])
    combined = pd.concat([existing, rows], ignore_index=True)
    with atomic_path(b.sids_path) as tmp:
        combined.to_parquet(tmp, index=False)
    all_codes = np.concatenate([old_codes, codes]) if len(old_codes) else codes
    b.record_stage("sids_assign", config={"method": config.method, "levels": config.levels},
                   outputs={"sids": b.sids_path},
                   counts={"new_items": len(rows), "skipped_existing": len(items) - len(fresh),
                           "items": len(combined),
                           "max_disambiguation_index": int(all_codes[:, -1].max()),
                           "collision_rate_after": collision_stats(all_codes)["collision_rate"],
                           "seconds": round(time.perf_counter() - t0, 3)})
    return rows


def _append_catalog(bundle: Bundle, rows: pd.DataFrame) -> None:
    """Append new items to `catalog.parquet` through `chatrec.data` (validated) when both exist."""
    if not bundle.catalog_path.exists() or rows.empty:
        return
    try:
        from chatrec.data.store import load_catalog, write_catalog
    except ImportError:  # data layer not installed: leave the catalog alone
        return
    catalog = load_catalog(bundle)
    rows = rows[~rows["item_id"].astype(str).isin(set(catalog["item_id"].astype(str)))]
    if rows.empty:
        return
    write_catalog(pd.concat([catalog, rows], ignore_index=True), bundle)
