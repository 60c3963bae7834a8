"""Column coercion: values as read (CSV strings, JSON values, pandas values) to our types, with reasons.

Each `coerce_*` returns `(values, reasons)`, two object arrays with one entry per row; a reason is
None for a good value. Columns of plain strings or integers take vectorised paths (Arrow string
kernels, one check per distinct value), so a 1M-row log validates in seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from chatrec.data.schema import ACTION_RE

Coerced = tuple[np.ndarray, np.ndarray]  # (clean values, reason or None), one per row
_NUMBER_RE = re.compile(r"[+-]?\d+(\.\d*)?")
_TS_HINT = "expected ISO 8601 like 2024-01-31T12:00:00Z or unix seconds"


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


def object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _coerce_each(series: pd.Series, one: Callable[[Any], tuple[Any, str | None]]) -> Coerced:
    """Apply `one` to every value; columns of plain strings or ints are done once per distinct value."""
    n = len(series)
    if pd.api.types.infer_dtype(series, skipna=True) in ("string", "integer", "empty"):
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        done = [one(u) for u in uniques] + [one(None)]  # code -1 (a missing value) -> the last entry
        values = object_array([v for v, _ in done])[codes]
        reasons = object_array([r for _, r in done])[codes]
        return values, reasons
    done = [one(v) for v in series.tolist()]
    return object_array([v for v, _ in done]), object_array([r for _, r in done]) if n else np.empty(0, object)


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


def coerce_ids(series: pd.Series) -> Coerced:
    return _strip_strings(series, "missing value") or _coerce_each(series, _id_value)


def coerce_strings(series: pd.Series, missing_ok: bool = False) -> Coerced:
    fast = _strip_strings(series, None if missing_ok else "missing value")
    return fast or _coerce_each(series, _optional_string_value if missing_ok else _string_value)


def coerce_actions(series: pd.Series) -> Coerced:
    return _coerce_each(series, _action_value)


def coerce_categories(values: list[Any]) -> Coerced:
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
    return object_array(out), object_array(reasons)


def coerce_timestamps(series: pd.Series) -> Coerced:
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


def coerce_ratings(series: pd.Series) -> Coerced:
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
    return np.asarray(out, dtype="float64"), object_array(reasons)


def coerce_context(values: list[Any]) -> Coerced:
    out: list[Any] = []
    reasons: list[str | None] = []
    for v in values:
        clean: str | None = None
        reason: str | None = None
        if isinstance(v, str):
            clean = v if v.strip() else None
        elif isinstance(v, (dict, list, tuple, np.ndarray)) or not _is_missing(v):
            try:
                clean = json.dumps(jsonable(v), ensure_ascii=False)
            except (TypeError, ValueError):
                reason = f"expected a JSON value, got {_describe(v)}"
            except RecursionError:
                reason = "JSON value nested too deeply"
        out.append(clean)
        reasons.append(reason)
    return object_array(out), object_array(reasons)


def metadata_column(col: pd.Series, idx: np.ndarray, from_text: bool) -> pd.Series:
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
                        (v if isinstance(v, str) else json.dumps(jsonable(v), ensure_ascii=False))).astype(object)


def jsonable(v: Any) -> Any:
    """Values as read to plain JSON (NaN -> null, numpy -> Python, timestamps -> ISO strings)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [jsonable(x) for x in v]
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
