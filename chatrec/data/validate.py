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
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chatrec.bundle import atomic_path
from chatrec.data.readers import LocKind, RawTable, read_table
from chatrec.data.schema import (
    ACTION_RE,
    COLUMNS,
    TableKind,
    contract_columns,
    guess_kind,
    required_columns,
)
from chatrec.errors import DataError

_NUMBER_RE = re.compile(r"[+-]?\d+(\.\d*)?")
_TS_HINT = "expected ISO 8601 like 2024-01-31T12:00:00Z or unix seconds"


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
        return {"file": file, "line": self.loc, "field": ",".join(fields), "reason": reason,
                "row": _jsonable(self.raw)}


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
) -> ValidationReport:
    """Validate files; `paths` are classified by their columns, `catalogs`/`interactions` are explicit.

    Log item ids are checked against the valid rows of every catalog given; with no catalog that
    check is skipped (and said so in `notes`). Whole-file errors raise `DataError`; row problems are
    collected in the report and, with `quarantine_dir`, written there.
    """
    tables: list[tuple[TableKind, RawTable]] = []
    for p in paths:
        raw = read_table(p)
        tables.append((guess_kind(raw.columns), raw))
    tables += [("catalog", read_table(p, "catalog")) for p in catalogs]
    tables += [("interactions", read_table(p, "interactions")) for p in interactions]
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
    item_id = errors.column("item_id", _coerce_ids(frame["item_id"].tolist()))
    title = errors.column("title", _coerce_strings(frame["title"].tolist()))
    if "categories" in frame:
        categories = errors.column("categories", _coerce_categories(frame["categories"].tolist()))
    else:
        categories = [[] for _ in range(n)]
    if "text" in frame:
        text = errors.column("text", _coerce_strings(frame["text"].tolist(), missing_ok=True))
    else:
        text = [None] * n
    seen: dict[str, int] = {}
    for i in range(n):
        if i in errors.rows:
            continue
        key = item_id[i]
        if key in seen:
            errors.add(i, "item_id", f"duplicate item_id {key!r} (first at {_loc_text(raw, seen[key])}); "
                                     "the first row is kept")
        else:
            seen[key] = i
    keep = errors.keep_mask()
    idx = np.flatnonzero(keep)
    clean = pd.DataFrame({
        "item_id": [item_id[i] for i in idx],
        "title": [title[i] for i in idx],
        "text": [text[i] if text[i] else default_text(title[i], categories[i]) for i in idx],
        "categories": [categories[i] for i in idx],
    })
    ignored: list[str] = []
    for col in frame.columns:
        if col in contract_columns("catalog"):
            continue
        clean[str(col)] = _metadata_column(frame[col], idx, from_text=raw.path.lower().endswith((".csv", ".tsv")))
    return errors.result("catalog", clean, ignored)


def validate_interactions(raw: RawTable, known_items: set[str] | None = None) -> TableResult:
    """Check a log table; with `known_items`, item ids outside the catalog are rejected."""
    _require_columns(raw, "interactions")
    errors = _RowErrors(raw)
    frame = raw.frame
    user_id = errors.column("user_id", _coerce_ids(frame["user_id"].tolist()))
    item_id = errors.column("item_id", _coerce_ids(frame["item_id"].tolist()))
    action = errors.column("action", _coerce_actions(frame["action"].tolist()))
    timestamp = errors.column("timestamp", _coerce_timestamps(frame["timestamp"]))
    rating = errors.column("rating", _coerce_ratings(frame["rating"])) if "rating" in frame else None
    context = errors.column("context", _coerce_context(frame["context"].tolist())) if "context" in frame else None
    if known_items is not None:
        for i, item in enumerate(item_id):
            if item is not None and item not in known_items and i not in errors.rows:
                errors.add(i, "item_id", f"unknown item_id {item!r} (not in the catalog)")
    idx = np.flatnonzero(errors.keep_mask())
    clean = pd.DataFrame({
        "user_id": [user_id[i] for i in idx],
        "item_id": [item_id[i] for i in idx],
        "action": [action[i] for i in idx],
        "timestamp": pd.Series(np.asarray(timestamp, dtype="datetime64[ns]")[idx]).dt.tz_localize("UTC")
        if len(idx) else pd.Series([], dtype="datetime64[ns, UTC]"),
    })
    if rating is not None:
        clean["rating"] = np.asarray(rating, dtype="float64")[idx]
    if context is not None:
        clean["context"] = pd.Series([context[i] for i in idx], dtype=object)
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
        name = table.name
        if name in written:  # two inputs with the same file name
            name = f"{Path(name).stem}-{table.kind}{Path(name).suffix}"
        target = Path(out_dir) / f"{name}.jsonl"
        with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as fh:
            for rej in table.rejected:
                fh.write(json.dumps(rej.quarantine_record(table.path), ensure_ascii=False) + "\n")
        written[name] = target
    return written


# row error bookkeeping -------------------------------------------------------------------------
Coerced = tuple[list[Any], list[str | None]]


class _RowErrors:
    """Problems per frame row, plus the unreadable lines of the file."""

    def __init__(self, raw: RawTable):
        self.raw = raw
        self.rows: dict[int, list[Problem]] = {}

    def column(self, name: str, coerced: Coerced) -> list[Any]:
        values, reasons = coerced
        for i, reason in enumerate(reasons):
            if reason is not None:
                self.add(i, name, reason)
        return values

    def add(self, i: int, name: str, reason: str) -> None:
        self.rows.setdefault(i, []).append(
            Problem(self.raw.path, self.raw.locs[i], name, reason, self.raw.loc_kind))

    def keep_mask(self) -> np.ndarray:
        mask = np.ones(len(self.raw.frame), dtype=bool)
        if self.rows:
            mask[list(self.rows)] = False
        return mask

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
    found = ", ".join(raw.columns) or "none"
    names = ", ".join(missing)
    expected = ", ".join(c.name for c in COLUMNS[kind] if c.required)
    where = f"{raw.path}:{raw.header_line}" if raw.header_line is not None else raw.path
    what = "field on every line" if raw.path.lower().endswith((".jsonl", ".ndjson")) else "column"
    raise DataError(f"{where}: {names}: missing required {kind} {what} (found: {found}; "
                    f"a {kind} file needs {expected})")


def _loc_text(raw: RawTable, i: int) -> str:
    return f"row {raw.locs[i]}" if raw.loc_kind == "row" else f"line {raw.locs[i]}"


# coercers: values as read -> (clean values, reason or None per row) ----------------------------
def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _describe(v: Any) -> str:
    text = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    if len(text) > 40:
        text = text[:37] + "..."
    kind = "list" if isinstance(v, (list, tuple, np.ndarray)) else type(v).__name__
    return f"{kind} {text}"


def _coerce_ids(values: list[Any]) -> Coerced:
    out: list[Any] = []
    reasons: list[str | None] = []
    for v in values:
        clean: str | None = None
        reason: str | None = None
        if _is_missing(v):
            reason = "missing value"
        elif isinstance(v, str):
            clean = v.strip()
        elif isinstance(v, (bool, np.bool_)):
            reason = f"expected a string or integer id, got {_describe(v)}"
        elif isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            clean = str(int(v))
        else:
            reason = f"expected a string or integer id, got {_describe(v)}"
        out.append(clean)
        reasons.append(reason)
    return out, reasons


def _coerce_strings(values: list[Any], missing_ok: bool = False) -> Coerced:
    out: list[Any] = []
    reasons: list[str | None] = []
    for v in values:
        clean: str | None = None
        reason: str | None = None
        if _is_missing(v):
            reason = None if missing_ok else "missing value"
        elif isinstance(v, str):
            clean = v.strip()
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            clean = str(v)
        else:
            reason = f"expected a string, got {_describe(v)}"
        out.append(clean)
        reasons.append(reason)
    return out, reasons


def _coerce_categories(values: list[Any]) -> Coerced:
    out: list[Any] = []
    reasons: list[str | None] = []
    for v in values:
        items: Any = []
        reason: str | None = None
        if isinstance(v, str) and not _is_missing(v):
            s = v.strip()
            if s.startswith("["):
                try:
                    items = json.loads(s)
                except json.JSONDecodeError:
                    items, reason = [], f"not a JSON array of strings: {_describe(v)}"
            else:
                items = [part for part in (p.strip() for p in s.split("|")) if part]
        elif isinstance(v, (list, tuple, np.ndarray)):
            items = list(v)
        elif not _is_missing(v):
            reason = f"expected a list of strings, got {_describe(v)}"
        if reason is None:
            if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
                reason, items = f"expected a list of non-empty strings, got {_describe(v)}", []
            else:
                items = [x.strip() for x in items]
        out.append(items)
        reasons.append(reason)
    return out, reasons


def _coerce_actions(values: list[Any]) -> Coerced:
    out: list[Any] = []
    reasons: list[str | None] = []
    for v in values:
        clean: str | None = None
        reason: str | None = None
        if _is_missing(v):
            reason = "missing value"
        elif not isinstance(v, str):
            reason = f"expected a string, got {_describe(v)}"
        else:
            s = v.strip().lower()
            if ACTION_RE.fullmatch(s):
                clean = s
            else:
                reason = f"invalid action {v!r}: use lower-case letters, digits and _ (e.g. click, add_to_cart)"
        out.append(clean)
        reasons.append(reason)
    return out, reasons


def _coerce_timestamps(series: pd.Series) -> Coerced:
    """To datetime64[ns] UTC (as naive numpy values); ISO strings, unix seconds or datetimes."""
    n = len(series)
    out = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    reasons: list[str | None] = [None] * n
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        s = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
        out[:] = s.dt.tz_localize(None).astype("datetime64[ns]").to_numpy()
        for i in np.flatnonzero(s.isna().to_numpy()):
            reasons[i] = "missing value"
        return list(out), reasons
    values = series.tolist()
    num_i: list[int] = []
    num_v: list[float] = []
    str_i: list[int] = []
    str_v: list[Any] = []
    for i, v in enumerate(values):
        if _is_missing(v):
            reasons[i] = "missing value"
        elif isinstance(v, (bool, np.bool_)):
            reasons[i] = f"expected a timestamp, got {_describe(v)}"
        elif isinstance(v, (int, float, np.integer, np.floating)):
            num_i.append(i)
            num_v.append(float(v))
        elif isinstance(v, str):
            s = v.strip()
            if _NUMBER_RE.fullmatch(s):
                num_i.append(i)
                num_v.append(float(s))
            else:
                str_i.append(i)
                str_v.append(s)
        elif isinstance(v, (pd.Timestamp, np.datetime64)) or hasattr(v, "isoformat"):
            str_i.append(i)
            str_v.append(v)
        else:
            reasons[i] = f"expected a timestamp, got {_describe(v)}"
    lo, hi = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")

    def fill(idx: list[int], raw: list[Any], parse: Callable[[list[Any]], pd.DatetimeIndex]) -> None:
        if not idx:
            return
        parsed = parse(raw)
        bad = parsed.isna() | (parsed < lo) | (parsed > hi)
        good = pd.DatetimeIndex(parsed.where(~bad)).tz_localize(None).astype("datetime64[ns]").to_numpy()
        for j, i in enumerate(idx):
            if bad[j]:
                reasons[i] = f"unparseable timestamp {raw[j]!r} ({_TS_HINT})"
            else:
                out[i] = good[j]

    with np.errstate(all="ignore"):
        fill(num_i, num_v, lambda raw: pd.DatetimeIndex(
            pd.to_datetime(np.asarray(raw, dtype="float64"), unit="s", utc=True, errors="coerce")))
    fill(str_i, str_v, lambda raw: pd.DatetimeIndex(
        pd.to_datetime(pd.Series(raw, dtype=object), utc=True, format="ISO8601", errors="coerce")))
    return list(out), reasons


def _coerce_ratings(series: pd.Series) -> Coerced:
    n = len(series)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return list(series.astype("float64").to_numpy()), [None] * n
    out: list[Any] = []
    reasons: list[str | None] = []
    for v in series.tolist():
        clean, reason = math.nan, None
        if _is_missing(v):
            pass
        elif isinstance(v, (bool, np.bool_)):
            reason = f"expected a number, got {_describe(v)}"
        elif isinstance(v, (int, float, np.integer, np.floating)):
            clean = float(v)
        elif isinstance(v, str):
            try:
                clean = float(v.strip())
            except ValueError:
                reason = f"expected a number, got {_describe(v)}"
        else:
            reason = f"expected a number, got {_describe(v)}"
        out.append(clean)
        reasons.append(reason)
    return out, reasons


def _coerce_context(values: list[Any]) -> Coerced:
    out: list[Any] = []
    reasons: list[str | None] = []
    for v in values:
        clean: str | None = None
        reason: str | None = None
        if isinstance(v, str):
            clean = v if v.strip() else None
        elif isinstance(v, (dict, list, tuple, np.ndarray)) or not _is_missing(v):
            try:
                clean = json.dumps(_jsonable(v), ensure_ascii=False)
            except (TypeError, ValueError):
                reason = f"expected a JSON value, got {_describe(v)}"
        out.append(clean)
        reasons.append(reason)
    return out, reasons


def _metadata_column(col: pd.Series, idx: np.ndarray, from_text: bool) -> pd.Series:
    """A free metadata column for the kept rows; CSV text that is all numbers becomes numeric."""
    import pyarrow as pa

    kept = col.iloc[idx].reset_index(drop=True)
    if from_text:
        kept = kept.map(lambda v: None if _is_missing(v) else v).astype(object)
        numeric = pd.to_numeric(kept, errors="coerce")
        if numeric.notna().sum() == kept.notna().sum() and kept.notna().any():
            whole = numeric.dropna()
            return numeric.astype("Int64") if (whole == whole.round()).all() else numeric
        return kept
    try:
        pa.array(kept, from_pandas=True)
        return kept
    except (pa.ArrowException, TypeError, ValueError):
        return kept.map(lambda v: None if _is_missing(v) else
                        (v if isinstance(v, str) else json.dumps(_jsonable(v), ensure_ascii=False))).astype(object)


def _jsonable(v: Any) -> Any:
    """Values as read to plain JSON (NaN -> null, numpy -> Python, timestamps -> ISO strings)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) or math.isinf(v) else float(v)
    if isinstance(v, str):
        return v
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)
