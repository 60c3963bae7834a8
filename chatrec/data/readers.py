"""Read Parquet, JSONL and CSV into raw tables that remember where every row came from.

Locations: CSV rows carry the physical line number of the line they start on (the header is line
1), JSONL rows their line number, Parquet rows their 0-based row index ("row N"). Blank lines in
CSV and JSONL are not rows. Lines that cannot be parsed at all (malformed JSON, a CSV line with the
wrong number of fields) become `unreadable` rows: they count as rows in, and are quarantined.

Values are kept as read (CSV: strings; JSONL: JSON values; Parquet: pandas values), so the
validator can both coerce them and write the original into the quarantine file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from chatrec.errors import DataError

LocKind = Literal["line", "row"]
PROGRESS_MIN_BYTES = 32 << 20
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".csv": "csv", ".tsv": "tsv"}


@dataclass
class Unreadable:
    """A line that could not be parsed into a record."""

    loc: int
    field: str
    reason: str
    raw: Any


@dataclass
class RawTable:
    """Records as read from one file, each with its line (or row) number."""

    path: str
    frame: pd.DataFrame  # object columns, values as read
    locs: list[int]  # one per frame row
    loc_kind: LocKind
    columns: list[str]  # columns present in the file (CSV header, Parquet schema, union of JSONL keys)
    unreadable: list[Unreadable] = field(default_factory=list)
    header_line: int | None = None  # CSV: where the header is

    @property
    def rows_in(self) -> int:
        return len(self.frame) + len(self.unreadable)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, path: str) -> RawTable:
        """An in-memory DataFrame as a table whose rows are located by index ("row N")."""
        frame = frame.reset_index(drop=True)
        return cls(path=path, frame=frame, locs=list(range(len(frame))), loc_kind="row",
                   columns=[str(c) for c in frame.columns])


def detect_format(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    for suffix in reversed(suffixes):
        if suffix in FORMATS:
            return FORMATS[suffix]
    allowed = ", ".join(sorted(FORMATS))
    raise DataError(f"{path}: unknown file type {p.suffix!r}; expected one of {allowed}")


def read_table(
    path: str | os.PathLike[str], kind: str | None = None, columns: Mapping[str, str] | None = None
) -> RawTable:
    """Read one input file; raises `DataError` for a missing, unreadable or empty file.

    `kind` ("catalog" / "interactions"), when known, only makes error messages name the columns needed.
    `columns` maps our field names to the file's column names (`{"item_id": "movieId"}`).
    """
    p = Path(path)
    shown = str(path)
    if kind is None:
        need = "a catalog (item_id, title, ...) or a log (user_id, item_id, action, timestamp, ...)"
    else:
        from chatrec.data.schema import required_columns

        need = f"{kind} columns {', '.join(required_columns(kind))}"  # type: ignore[arg-type]
    if not p.exists():
        raise DataError(f"{shown}: file not found (expected {need})")
    if p.is_dir():
        raise DataError(f"{shown}: is a directory, expected a .parquet, .jsonl or .csv file")
    fmt = detect_format(p)
    if p.stat().st_size == 0:
        raise DataError(f"{shown}: empty file, 0 bytes (expected {need})")
    if fmt == "parquet":
        table = _read_parquet(p, shown)
    elif fmt == "jsonl":
        table = _read_jsonl(p, shown)
    else:
        table = _read_csv(p, shown, delimiter="\t" if fmt == "tsv" else ",")
    if columns:
        _rename(table, columns)
    if table.rows_in == 0:
        where = f"{shown}:{table.header_line}" if table.header_line is not None else shown
        found = f"found columns: {', '.join(table.columns)}; " if table.columns else ""
        raise DataError(f"{where}: empty file, no rows ({found}expected {need})")
    return table


def _read_parquet(p: Path, shown: str) -> RawTable:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{shown}: not a readable Parquet file ({_first_line(exc)})") from None
    frame = table.to_pandas(integer_object_nulls=True)
    return RawTable(path=shown, frame=frame, locs=list(range(len(frame))), loc_kind="row",
                    columns=[str(c) for c in frame.columns])


def _read_jsonl(p: Path, shown: str) -> RawTable:
    records: list[dict[str, Any]] = []
    locs: list[int] = []
    unreadable: list[Unreadable] = []
    columns: dict[str, None] = {}
    with p.open("r", encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(_with_progress(fh, p), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                unreadable.append(Unreadable(lineno, "<line>", f"malformed JSON ({exc.msg} at column {exc.colno})",
                                             line.rstrip("\n")))
                continue
            except RecursionError:
                unreadable.append(Unreadable(lineno, "<line>", "JSON nested too deeply to read",
                                             line.rstrip("\n")[:1000]))
                continue
            if not isinstance(obj, dict):
                unreadable.append(Unreadable(lineno, "<line>", f"expected a JSON object, got {type(obj).__name__}",
                                             obj))
                continue
            for key in obj:
                columns.setdefault(str(key), None)
            records.append(obj)
            locs.append(lineno)
    cols = list(columns)
    frame = pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=object) for c in cols},
                         columns=cols)
    return RawTable(path=shown, frame=frame, locs=locs, loc_kind="line", columns=cols, unreadable=unreadable)


def _read_csv(p: Path, shown: str, delimiter: str) -> RawTable:
    rows: list[list[str]] = []
    locs: list[int] = []
    unreadable: list[Unreadable] = []
    header: list[str] | None = None
    header_line: int | None = None
    with p.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(_with_progress(fh, p), delimiter=delimiter)
        last_line = 0
        while True:
            start = last_line + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                unreadable.append(Unreadable(start, "<line>", f"malformed CSV ({exc})", None))
                last_line = reader.line_num
                continue
            last_line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header = [c.strip() for c in record]
                header_line = start
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes:
                    raise DataError(f"{shown}:{start}: {', '.join(dupes)}: duplicate column name in the header")
                continue
            if len(record) != len(header):
                unreadable.append(Unreadable(
                    start, "<line>", f"expected {len(header)} fields like the header, got {len(record)}",
                    record))
                continue
            rows.append(record)
            locs.append(start)
    cols = header or []
    frame = pd.DataFrame(rows, columns=cols, dtype=object) if rows else pd.DataFrame(columns=cols, dtype=object)
    return RawTable(path=shown, frame=frame, locs=locs, loc_kind="line", columns=cols,
                    unreadable=unreadable, header_line=header_line)


def _rename(table: RawTable, columns: Mapping[str, str]) -> None:
    """Give the file's columns our names: `columns` is {our field: the file's column}."""
    back = {theirs: ours for ours, theirs in columns.items() if theirs in table.columns}
    clash = [ours for theirs, ours in back.items() if ours in table.columns and ours not in back]
    if clash:
        where = f"{table.path}:{table.header_line}" if table.header_line is not None else table.path
        raise DataError(f"{where}: {', '.join(clash)}: the file already has this column; "
                        "cannot also map another column onto it")
    table.columns = [back.get(c, c) for c in table.columns]
    table.frame = table.frame.rename(columns=back)


def _with_progress(lines: Iterable[str], p: Path) -> Iterator[str]:
    """Yield `lines`, with a progress bar over the file's size for files of 32 MB and more."""
    from tqdm import tqdm

    size = p.stat().st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {p.name}", leave=False,
               disable=size < PROGRESS_MIN_BYTES)
    pending = 0
    try:
        for n, line in enumerate(lines):
            pending += len(line)
            if n % 16384 == 0:
                bar.update(pending)
                pending = 0
            yield line
    finally:
        bar.update(pending)
        bar.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
