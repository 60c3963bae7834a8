"""Write the shared tiny catalog / log as Parquet, JSONL or CSV files, and read quarantine files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for rec in df.to_dict(orient="records"):
        rows.append({k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in rec.items()})
    return rows


def write_jsonl(df: pd.DataFrame, path: Path, extra_lines: dict[int, str] | None = None) -> Path:
    """One JSON object a line; `extra_lines` inserts raw text so that it lands on that 1-based line."""
    lines = [json.dumps(r) for r in _records(df)]
    for lineno in sorted(extra_lines or {}):
        lines.insert(lineno - 1, (extra_lines or {})[lineno])
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    out = df.copy()
    if "categories" in out:
        out["categories"] = out["categories"].map("|".join)
    if "timestamp" in out:
        out["timestamp"] = out["timestamp"].map(lambda t: t.isoformat())
    out.to_csv(path, index=False)
    return path


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    df.to_parquet(path, index=False)
    return path


def read_quarantine(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
