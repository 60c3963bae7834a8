"""Read and write the bundle's `catalog.parquet` and `interactions.parquet` (atomic, schema-checked)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from chatrec.bundle import Bundle, atomic_path
from chatrec.data.readers import RawTable
from chatrec.data.schema import catalog_arrow_fields, interactions_arrow_fields
from chatrec.data.validate import TableResult, validate_catalog, validate_interactions
from chatrec.errors import DataError

BundleLike = Bundle | str | os.PathLike[str]


def _bundle(bundle: BundleLike) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else Bundle(bundle)


def load_catalog(bundle: BundleLike) -> pd.DataFrame:
    """The bundle's catalog: `item_id`, `title`, `text`, `categories` (lists of str), metadata columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _bundle(bundle).require("catalog.parquet")
    ints = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}  # keep integer metadata with nulls
    df = pq.read_table(path).to_pandas(types_mapper=ints.get)
    df["categories"] = [list(c) if c is not None else [] for c in df["categories"]]
    return df


def load_interactions(bundle: BundleLike) -> pd.DataFrame:
    """The bundle's log, sorted by (`user_id`, `timestamp`); `timestamp` is datetime64[ns, UTC]."""
    path = _bundle(bundle).require("interactions.parquet")
    df = pd.read_parquet(path)
    df["timestamp"] = df["timestamp"].astype("datetime64[ns, UTC]")
    return df


def write_catalog(df: pd.DataFrame, bundle: BundleLike) -> Path:
    """Validate `df` as a catalog and write it as the bundle's `catalog.parquet` (whole table, atomic).

    Raises `DataError` listing the first problems when any row is invalid (nothing is written).
    """
    result = validate_catalog(RawTable.from_frame(df, "catalog"))
    _raise_if_rejected(result)
    return write_catalog_frame(result.frame, _bundle(bundle).catalog_path)


def write_interactions(df: pd.DataFrame, bundle: BundleLike, *, check_items: bool = True) -> Path:
    """Validate `df` as a log and write it sorted as the bundle's `interactions.parquet` (atomic).

    With `check_items`, item ids must exist in the bundle's `catalog.parquet` (when it exists);
    raises `DataError` listing the first problems when any row is invalid (nothing is written).
    """
    b = _bundle(bundle)
    known = None
    if check_items and b.catalog_path.exists():
        known = set(pd.read_parquet(b.catalog_path, columns=["item_id"])["item_id"])
    result = validate_interactions(RawTable.from_frame(df, "interactions"), known_items=known)
    _raise_if_rejected(result)
    return write_interactions_frame(result.frame, b.interactions_path)


def _raise_if_rejected(result: TableResult) -> None:
    if not result.rejected:
        return
    first = "; ".join(str(p) for p in result.problems[:3])
    raise DataError(f"{result.rows_quarantined} invalid {result.kind} row(s), nothing written; {first}")


def write_catalog_frame(clean: pd.DataFrame, target: Path) -> Path:
    """Write an already validated catalog frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = catalog_arrow_fields()
    arrays = [pa.array(clean[f.name].tolist(), type=f.type) for f in fields]
    names = [f.name for f in fields]
    for col in clean.columns:
        if col not in names:
            arrays.append(pa.array(clean[col], from_pandas=True))
            fields.append(pa.field(str(col), arrays[-1].type))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return target


def write_interactions_frame(clean: pd.DataFrame, target: Path) -> Path:
    """Write an already validated log frame, sorted by (`user_id`, `timestamp`), ties in input order."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fields = interactions_arrow_fields("rating" in clean, "context" in clean)
    arrays = []
    for f in fields:
        col = clean[f.name]
        if f.name == "timestamp":
            arrays.append(pa.array(col.astype("datetime64[ns, UTC]"), type=f.type))
        else:
            arrays.append(pa.array(col, type=f.type, from_pandas=True))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    # Arrow's sort is stable: rows with the same user and time keep their input order
    table = table.take(pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")]))
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return target
