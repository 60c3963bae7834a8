"""Validate raw tables against the contract: keep valid rows, collect every problem, quarantine bad rows.

Every problem names the file, the line (CSV/JSONL, 1-based, the CSV header is line 1) or row
(Parquet / in-memory frames, 0-based index) and the field. Row problems never stop validation; a
file that cannot be used at all (missing, empty, a required column absent) raises `DataError`.
Invariant, checked here: rows in = rows kept + rows quarantined.

Checks: ids present and string-like (integers are turned into strings), titles present, categories
a list of strings (CSV: a JSON array or `a|b|c`), actions `[a-z0-9_]+` after lower-casing,
timestamps ISO 8601 (no offset means UTC) or unix seconds, ratings numeric, context a JSON value,
duplicate catalog item ids (the first valid row is kept, later ones are quarantined) and log item
ids missing from the catalog.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chatrec.bundle import atomic_path
from chatrec.data.coerce import (
    Coerced,
    coerce_actions,
    coerce_categories,
    coerce_context,
    coerce_ids,
    coerce_ratings,
    coerce_strings,
    coerce_timestamps,
    jsonable,
    metadata_column,
    object_array,
)
from chatrec.data.readers import LocKind, RawTable, read_table
from chatrec.data.schema import (
    COLUMNS,
    TableKind,
    contract_columns,
    guess_kind,
    required_columns,
)
from chatrec.errors import DataError


# results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One problem in one field of one row (or a whole file when `loc` is None)."""

    file: str
    loc: int | None
    field: str
    reason: str
    loc_kind: LocKind = "line"

    def __str__(self) -> str:
        if self.loc is None:
            return f"{self.file}: {self.field}: {self.reason}"
        where = f"row {self.loc}" if self.loc_kind == "row" else str(self.loc)
        return f"{self.file}:{where}: {self.field}: {self.reason}"


@dataclass
class Rejected:
    """A quarantined row: where it was, why, and its original values."""

    loc: int
    problems: list[Problem]
    raw: Any

    def quarantine_record(self, file: str) -> dict[str, Any]:
        fields = list(dict.fromkeys(p.field for p in self.problems))
        if len(self.problems) == 1:
            reason = self.problems[0].reason
        else:
            reason = "; ".join(f"{p.field}: {p.reason}" for p in self.problems)
        try:
            row = jsonable(self.raw)
            json.dumps(row)
        except RecursionError:  # a row nested too deeply to write back as JSON: keep its text (capped)
            row = repr(self.raw)[:100_000]
        return {"file": file, "line": self.loc, "field": ",".join(fields), "reason": reason, "row": row}


@dataclass
class TableResult:
    """The outcome of validating one table: the clean rows in our schema and the rejected ones."""

    kind: TableKind
    path: str
    frame: pd.DataFrame
    rows_in: int
    rejected: list[Rejected]
    loc_kind: LocKind
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def rows_kept(self) -> int:
        return len(self.frame)

    @property
    def rows_quarantined(self) -> int:
        return len(self.rejected)

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.rejected for p in r.problems]

    def summary(self) -> str:
        return (f"{self.path}: {self.kind}, {self.rows_in:,} rows in, {self.rows_kept:,} kept, "
                f"{self.rows_quarantined:,} quarantined")


@dataclass
class ValidationReport:
    """Validation results of several files, catalogs first."""

    tables: list[TableResult]
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [p for t in self.tables for p in t.problems]

    @property
    def rows_quarantined(self) -> int:
        return sum(t.rows_quarantined for t in self.tables)

    @property
    def ok(self) -> bool:
        return self.rows_quarantined == 0

    def summary(self) -> str:
        n = len(self.problems)
        files = sorted({t.path for t in self.tables if t.rejected})
        if not n:
            return f"{len(self.tables)} file(s) valid: " + "; ".join(t.summary() for t in self.tables)
        first = self.problems[0]
        return (f"{n} problem(s) in {self.rows_quarantined} row(s) of {', '.join(files)}; first: {first}")


# public entry points --------------------------------------------------------------------------
def validate_files(
    paths: Sequence[str | os.PathLike[str]] = (),
    *,
    catalogs: Sequence[str | os.PathLike[str]] = (),
    interactions: Sequence[str | os.PathLike[str]] = (),
    quarantine_dir: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
) -> ValidationReport:
    """Validate files; `paths` are classified by their columns, `catalogs`/`interactions` are explicit.

    Log item ids are checked against the valid rows of every catalog given; with no catalog that
    check is skipped (and said so in `notes`). Whole-file errors raise `DataError`; row problems are
    collected in the report and, with `quarantine_dir`, written there. `columns` maps our field names
    to the files' column names (`{"item_id": "movieId"}`).
    """
    tables: list[tuple[TableKind, RawTable]] = []
    for p in paths:
        raw = read_table(p, columns=columns)
        tables.append((guess_kind(raw.columns), raw))
    tables += [("catalog", read_table(p, "catalog", columns)) for p in catalogs]
    tables += [("interactions", read_table(p, "interactions", columns)) for p in interactions]
    if not tables:
        raise DataError("no files to validate; pass one or more .parquet, .jsonl or .csv files")
    results: list[TableResult] = []
    known: set[str] | None = None
    for kind, raw in tables:
        if kind == "catalog":
            res = validate_catalog(raw)
            known = (known or set()) | set(res.frame["item_id"])
            results.append(res)
    notes = []
    for kind, raw in tables:
        if kind == "interactions":
            results.append(validate_interactions(raw, known_items=known))
            if known is None:
                notes.append(f"{raw.path}: item ids not checked against a catalog (none given)")
    report = ValidationReport(results, notes)
    if quarantine_dir is not None:
        write_quarantine(report.tables, quarantine_dir)
    return report


def validate_catalog(raw: RawTable) -> TableResult:
    """Check a catalog table; duplicate item ids keep their first valid row."""
    _require_columns(raw, "catalog")
    errors = _RowErrors(raw)
    frame = raw.frame
    n = len(frame)
    item_id = errors.column("item_id", coerce_ids(frame["item_id"]))
    title = errors.column("title", coerce_strings(frame["title"]))
    if "categories" in frame:
        categories = errors.column("categories", coerce_categories(frame["categories"].tolist()))
    else:
        categories = object_array([[] for _ in range(n)])
    if "text" in frame:
        text = errors.column("text", coerce_strings(frame["text"], missing_ok=True))
    else:
        text = np.full(n, None, dtype=object)
    seen: dict[str, int] = {}
    for i in np.flatnonzero(errors.keep_mask()):
        key = item_id[i]
        if key in seen:
            errors.add(int(i), "item_id", f"duplicate item_id {key!r} (first at {_loc_text(raw, seen[key])}); "
                                          "the first row is kept")
        else:
            seen[key] = int(i)
    idx = np.flatnonzero(errors.keep_mask())
    clean = pd.DataFrame({
        "item_id": item_id[idx],
        "title": title[idx],
        "text": [text[i] if text[i] else default_text(title[i], categories[i]) for i in idx],
        "categories": categories[idx],
    })
    for col in frame.columns:
        if col in contract_columns("catalog"):
            continue
        clean[str(col)] = metadata_column(frame[col], idx, from_text=raw.path.lower().endswith((".csv", ".tsv")))
    return errors.result("catalog", clean, [])


def validate_interactions(raw: RawTable, known_items: set[str] | None = None) -> TableResult:
    """Check a log table; with `known_items`, item ids outside the catalog are rejected."""
    _require_columns(raw, "interactions")
    errors = _RowErrors(raw)
    frame = raw.frame
    user_id = errors.column("user_id", coerce_ids(frame["user_id"]))
    item_id = errors.column("item_id", coerce_ids(frame["item_id"]))
    action = errors.column("action", coerce_actions(frame["action"]))
    timestamp = errors.column("timestamp", coerce_timestamps(frame["timestamp"]))
    rating = errors.column("rating", coerce_ratings(frame["rating"])) if "rating" in frame else None
    context = errors.column("context", coerce_context(frame["context"].tolist())) if "context" in frame else None
    if known_items is not None:
        import pyarrow as pa
        import pyarrow.compute as pc

        known = pc.is_in(pa.array(item_id, type=pa.string()), value_set=pa.array(list(known_items), type=pa.string()))
        unknown = ~pc.fill_null(known, True).to_numpy(zero_copy_only=False) & errors.keep_mask()
        for i in np.flatnonzero(unknown):
            errors.add(int(i), "item_id", f"unknown item_id {item_id[i]!r} (not in the catalog)")
    idx = np.flatnonzero(errors.keep_mask())
    clean = pd.DataFrame({
        "user_id": user_id[idx],
        "item_id": item_id[idx],
        "action": action[idx],
        "timestamp": pd.Series(timestamp[idx].astype("datetime64[ns]")).dt.tz_localize("UTC"),
    })
    if rating is not None:
        clean["rating"] = rating[idx].astype("float64")
    if context is not None:
        clean["context"] = pd.Series(context[idx], dtype=object)
    ignored = [str(c) for c in frame.columns if c not in contract_columns("interactions")]
    return errors.result("interactions", clean, ignored)


def default_text(title: str, categories: Sequence[str]) -> str:
    """Item text when a catalog has none: the title and its categories."""
    if categories:
        return f"{title}. Categories: {', '.join(categories)}."
    return title


def write_quarantine(tables: Iterable[TableResult], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write `out_dir/<input-file-name>.jsonl` for each table with rejected rows; returns name -> path."""
    written: dict[str, Path] = {}
    for table in tables:
        if not table.rejected:
            continue
        name, n = table.name, 1
        while name in written:  # two inputs with the same file name (and kind): number them
            n += 1
            stem, suffix = Path(table.name).stem, Path(table.name).suffix
            name = f"{stem}-{table.kind}{suffix}" if n == 2 else f"{stem}-{table.kind}-{n}{suffix}"
        target = Path(out_dir) / f"{name}.jsonl"
        with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as fh:
            for rej in table.rejected:
                fh.write(json.dumps(rej.quarantine_record(table.path), ensure_ascii=False) + "\n")
        written[name] = target
    return written


# row error bookkeeping -------------------------------------------------------------------------
class _RowErrors:
    """Problems per frame row, plus the unreadable lines of the file."""

    def __init__(self, raw: RawTable):
        self.raw = raw
        self.rows: dict[int, list[Problem]] = {}
        self._keep = np.ones(len(raw.frame), dtype=bool)

    def column(self, name: str, coerced: Coerced) -> np.ndarray:
        values, reasons = coerced
        for i in np.flatnonzero(pd.notna(reasons)):
            self.add(int(i), name, str(reasons[i]))
        return values

    def add(self, i: int, name: str, reason: str) -> None:
        self._keep[i] = False
        self.rows.setdefault(i, []).append(
            Problem(self.raw.path, self.raw.locs[i], name, reason, self.raw.loc_kind))

    def keep_mask(self) -> np.ndarray:
        return self._keep.copy()

    def result(self, kind: TableKind, clean: pd.DataFrame, ignored: list[str]) -> TableResult:
        raw = self.raw
        rejected = [Rejected(u.loc, [Problem(raw.path, u.loc, u.field, u.reason, raw.loc_kind)], u.raw)
                    for u in raw.unreadable]
        frame = raw.frame
        rejected += [Rejected(raw.locs[i], probs, frame.iloc[i].to_dict()) for i, probs in self.rows.items()]
        rejected.sort(key=lambda r: r.loc)
        res = TableResult(kind, raw.path, clean.reset_index(drop=True), raw.rows_in, rejected,
                          raw.loc_kind, ignored)
        if res.rows_in != res.rows_kept + res.rows_quarantined:  # pragma: no cover - a bug, not bad data
            raise AssertionError(f"{raw.path}: {res.rows_in} rows in != {res.rows_kept} kept + "
                                 f"{res.rows_quarantined} quarantined")
        return res


def _require_columns(raw: RawTable, kind: TableKind) -> None:
    missing = [c for c in required_columns(kind) if c not in raw.columns]
    if not missing:
        return
    if len(raw.frame) == 0 and raw.unreadable:
        first = raw.unreadable[0]
        raise DataError(f"{raw.path}:{first.loc}: {first.field}: no readable rows, {len(raw.unreadable)} "
                        f"unreadable line(s); first: {first.reason}")
    found = ", ".join(raw.columns) or "none"
    names = ", ".join(missing)
    expected = ", ".join(c.name for c in COLUMNS[kind] if c.required)
    where = f"{raw.path}:{raw.header_line}" if raw.header_line is not None else raw.path
    what = "field on every line" if raw.path.lower().endswith((".jsonl", ".ndjson")) else "column"
    raise DataError(f"{where}: {names}: missing required {kind} {what} (found: {found}; "
                    f"a {kind} file needs {expected})")


def _loc_text(raw: RawTable, i: int) -> str:
    return f"row {raw.locs[i]}" if raw.loc_kind == "row" else f"line {raw.locs[i]}"
