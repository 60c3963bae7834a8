"""Column specs of the two bundle tables (docs/internals.md), and the Arrow schemas they are written with.

`catalog.parquet`: `item_id` str, `title` str, `text` str, `categories` list<str>, then free metadata
columns. `interactions.parquet`: `user_id` str, `item_id` str, `action` str (`[a-z0-9_]+`),
`timestamp` datetime64[ns, UTC], optional `rating` float, optional `context` str (JSON), sorted by
(`user_id`, `timestamp`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

Kind = Literal["id", "string", "categories", "action", "timestamp", "rating", "context"]
TableKind = Literal["catalog", "interactions"]

ACTION_RE = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class ColumnSpec:
    """One contract column: its name, how values are checked and coerced, and whether it must exist."""

    name: str
    kind: Kind
    required: bool
    help: str


CATALOG_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("item_id", "id", True, "unique item id (string; integers are accepted and turned into strings)"),
    ColumnSpec("title", "string", True, "display title"),
    ColumnSpec("text", "string", False,
               "text the SIDs are learned from; when absent or empty: the title plus its categories"),
    ColumnSpec("categories", "categories", False,
               "list of strings; in CSV a JSON array or 'a|b|c'; when absent: []"),
)

INTERACTION_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("user_id", "id", True, "user id (string; integers are accepted)"),
    ColumnSpec("item_id", "id", True, "item id; must exist in the catalog"),
    ColumnSpec("action", "action", True, "lower-case action name, [a-z0-9_]+ (e.g. click, like, watch)"),
    ColumnSpec("timestamp", "timestamp", True, "ISO 8601 string (UTC when no offset) or unix seconds"),
    ColumnSpec("rating", "rating", False, "optional number"),
    ColumnSpec("context", "context", False, "optional JSON object or string"),
)

COLUMNS: dict[TableKind, tuple[ColumnSpec, ...]] = {
    "catalog": CATALOG_COLUMNS,
    "interactions": INTERACTION_COLUMNS,
}

FILE_NAMES: dict[TableKind, str] = {"catalog": "catalog.parquet", "interactions": "interactions.parquet"}


def required_columns(kind: TableKind) -> list[str]:
    return [c.name for c in COLUMNS[kind] if c.required]


def contract_columns(kind: TableKind) -> list[str]:
    return [c.name for c in COLUMNS[kind]]


def guess_kind(columns: list[str]) -> TableKind:
    """Catalog or interactions, from the column names a file has (ties go to the catalog)."""
    cols = set(columns)
    log_score = len(cols & {"user_id", "action", "timestamp", "rating", "context"})
    catalog_score = len(cols & {"title", "text", "categories"})
    return "interactions" if log_score > catalog_score else "catalog"


def catalog_arrow_fields() -> list[pa.Field]:
    return [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("categories", pa.list_(pa.string()), nullable=False),
    ]


def interactions_arrow_fields(with_rating: bool, with_context: bool) -> list[pa.Field]:
    fields = [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ns", tz="UTC"), nullable=False),
    ]
    if with_rating:
        fields.append(pa.field("rating", pa.float64()))
    if with_context:
        fields.append(pa.field("context", pa.string()))
    return fields
