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
    item_id = errors.column("item_id", _coerce_ids(frame["item_id"]))
    title = errors.column("title", _coerce_strings(frame["title"]))
    if "categories" in frame:
        categories = errors.column("categories", _coerce_categories(frame["categories"].tolist()))
    else:
        categories = _object_array([[] for _ in range(n)])
    if "text" in frame:
        text = errors.column("text", _coerce_strings(frame["text"], missing_ok=True))
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
        clean[str(col)] = _metadata_column(frame[col], idx, from_text=raw.path.lower().endswith((".csv", ".tsv")))
    return errors.result("catalog", clean, [])


def validate_interactions(raw: RawTable, known_items: set[str] | None = None) -> TableResult:
    """Check a log table; with `known_items`, item ids outside the catalog are rejected."""
    _require_columns(raw, "interactions")
    errors = _RowErrors(raw)
    frame = raw.frame
    user_id = errors.column("user_id", _coerce_ids(frame["user_id"]))
    item_id = errors.column("item_id", _coerce_ids(frame["item_id"]))
    action = errors.column("action", _coerce_actions(frame["action"]))
    timestamp = errors.column("timestamp", _coerce_timestamps(frame["timestamp"]))
    rating = errors.column("rating", _coerce_ratings(frame["rating"])) if "rating" in frame else None
    context = errors.column("context", _coerce_context(frame["context"].tolist())) if "context" in frame else None
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
Coerced = tuple[np.ndarray, np.ndarray]  # (clean values, reason or None), one per row


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


def _object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _coerce_each(series: pd.Series, one: Callable[[Any], tuple[Any, str | None]]) -> Coerced:
    """Apply `one` to every value; columns of plain strings or ints are done once per distinct value."""
    n = len(series)
    if pd.api.types.infer_dtype(series, skipna=True) in ("string", "integer", "empty"):
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        done = [one(u) for u in uniques] + [one(None)]  # code -1 (a missing value) -> the last entry
        values = _object_array([v for v, _ in done])[codes]
        reasons = _object_array([r for _, r in done])[codes]
        return values, reasons
    done = [one(v) for v in series.tolist()]
    return _object_array([v for v, _ in done]), _object_array([r for _, r in done]) if n else np.empty(0, object)


def _id_value(v: Any) -> tuple[str | None, str | None]:
    if _is_missing(v):
        return None, "missing value"
    if isinstance(v, str):
        return v.strip(), None
    if isinstance(v, (bool, np.bool_)):
        return None, f"expected a string or integer id, got {_describe(v)}"
    if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
        return str(int(v)), None
    return None, f"expected a string or integer id, got {_describe(v)}"


def _string_value(v: Any) -> tuple[str | None, str | None]:
    if _is_missing(v):
        return None, "missing value"
    if isinstance(v, str):
        return v.strip(), None
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        return str(v), None
    return None, f"expected a string, got {_describe(v)}"


def _optional_string_value(v: Any) -> tuple[str | None, str | None]:
    return (None, None) if _is_missing(v) else _string_value(v)


def _action_value(v: Any) -> tuple[str | None, str | None]:
    if _is_missing(v):
        return None, "missing value"
    if not isinstance(v, str):
        return None, f"expected a string, got {_describe(v)}"
    s = v.strip().lower()
    if ACTION_RE.fullmatch(s):
        return s, None
    return None, f"invalid action {v!r}: use lower-case letters, digits and _ (e.g. click, add_to_cart)"


def _trimmed_strings(series: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(stripped values, missing mask) computed in Arrow for a column of only strings; None otherwise."""
    if pd.api.types.infer_dtype(series, skipna=True) != "string":
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.utf8_trim_whitespace(pa.array(series, type=pa.string(), from_pandas=True))
    missing = pc.fill_null(pc.equal(arr, ""), True).to_numpy(zero_copy_only=False)
    out = arr.to_numpy(zero_copy_only=False).astype(object)
    out[missing] = None
    return out, missing


def _numeric_strings(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Mask of the (stripped, non-missing) strings that are plain numbers, e.g. unix seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(values, type=pa.string(), from_pandas=True)
    matched = pc.fill_null(pc.match_substring_regex(arr, f"^(?:{_NUMBER_RE.pattern})$"), False)
    return matched.to_numpy(zero_copy_only=False) & ~missing


def _strip_strings(series: pd.Series, missing_reason: str | None) -> Coerced | None:
    """Vectorised path for a column holding only strings (and missing values); None otherwise."""
    trimmed = _trimmed_strings(series)
    if trimmed is None:
        return None
    out, missing = trimmed
    reasons = np.full(len(out), None, dtype=object)
    reasons[missing] = missing_reason
    return out, reasons


def _coerce_ids(series: pd.Series) -> Coerced:
    return _strip_strings(series, "missing value") or _coerce_each(series, _id_value)


def _coerce_strings(series: pd.Series, missing_ok: bool = False) -> Coerced:
    fast = _strip_strings(series, None if missing_ok else "missing value")
    return fast or _coerce_each(series, _optional_string_value if missing_ok else _string_value)


def _coerce_actions(series: pd.Series) -> Coerced:
    return _coerce_each(series, _action_value)


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
    return _object_array(out), _object_array(reasons)


def _coerce_timestamps(series: pd.Series) -> Coerced:
    """To datetime64[ns] UTC (as naive numpy values); ISO strings, unix seconds or datetimes."""
    n = len(series)
    out = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    reasons = np.full(n, None, dtype=object)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        s = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
        out[:] = s.dt.tz_localize(None).astype("datetime64[ns]").to_numpy()
        reasons[s.isna().to_numpy()] = "missing value"
        return out, reasons
    kind = pd.api.types.infer_dtype(series, skipna=True)
    num_i: list[int] | np.ndarray
    str_i: list[int] | np.ndarray
    trimmed = _trimmed_strings(series) if kind == "string" else None
    if trimmed is not None:  # the usual CSV / JSONL column: vectorised
        values, missing = trimmed
        is_num = _numeric_strings(values, missing)
        num_i, str_i = np.flatnonzero(is_num), np.flatnonzero(~is_num & ~missing)
        num_v: list[Any] = values[num_i].astype("float64").tolist()
        str_v: list[Any] = values[str_i].tolist()
        reasons[missing] = "missing value"
    elif kind in ("integer", "floating", "mixed-integer-float") and not pd.api.types.is_bool_dtype(series.dtype):
        num = pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()
        missing = np.isnan(num)
        reasons[missing] = "missing value"
        num_i, str_i = np.flatnonzero(~missing), []
        num_v, str_v = num[num_i].tolist(), []
    else:
        num_i, num_v, str_i, str_v = [], [], [], []
        for i, v in enumerate(series.tolist()):
            if _is_missing(v):
                reasons[i] = "missing value"
            elif isinstance(v, (bool, np.bool_)):
                reasons[i] = f"expected a timestamp, got {_describe(v)}"
            elif isinstance(v, (int, float, np.integer, np.floating)):
                num_i.append(i)
                num_v.append(float(v))
            elif isinstance(v, str):
                st = v.strip()
                if _NUMBER_RE.fullmatch(st):
                    num_i.append(i)
                    num_v.append(float(st))
                else:
                    str_i.append(i)
                    str_v.append(st)
            elif isinstance(v, (pd.Timestamp, np.datetime64)) or hasattr(v, "isoformat"):
                str_i.append(i)
                str_v.append(v)
            else:
                reasons[i] = f"expected a timestamp, got {_describe(v)}"
    lo, hi = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")

    def fill(idx: list[int] | np.ndarray, raw: list[Any], parse: Callable[[list[Any]], pd.DatetimeIndex]) -> None:
        if not len(idx):
            return
        idx = np.asarray(idx, dtype=np.int64)
        parsed = parse(raw)
        bad = np.asarray(parsed.isna() | (parsed < lo) | (parsed > hi), dtype=bool)
        good = pd.DatetimeIndex(parsed.where(~bad)).tz_localize(None).astype("datetime64[ns]").to_numpy()
        out[idx[~bad]] = good[~bad]
        for j in np.flatnonzero(bad):
            reasons[idx[j]] = f"unparseable timestamp {raw[j]!r} ({_TS_HINT})"

    with np.errstate(all="ignore"):
        fill(num_i, num_v, lambda raw: pd.DatetimeIndex(
            pd.to_datetime(np.asarray(raw, dtype="float64"), unit="s", utc=True, errors="coerce")))
    fill(str_i, str_v, lambda raw: pd.DatetimeIndex(
        pd.to_datetime(pd.Series(raw, dtype=object), utc=True, format="ISO8601", errors="coerce")))
    return out, reasons


def _coerce_ratings(series: pd.Series) -> Coerced:
    n = len(series)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy(), np.full(n, None, dtype=object)
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
    return np.asarray(out, dtype="float64"), _object_array(reasons)


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
    return _object_array(out), _object_array(reasons)


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
