"""Catalog look-ups for the UI: search by title and metadata for cards.

Two sources with one interface: `LocalCatalog` reads `BUNDLE/catalog.parquet` (when the UI knows
the bundle), `RemoteCatalog` asks the server's `GET /v1/items?q=` (when it has one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from chatrec.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from ui.client import ChatrecClient


class ItemSource(Protocol):
    """What the UI needs from a catalog."""

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items whose title (or text) matches `query`, best first."""
        ...

    def rows(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Catalog rows (metadata) for `item_ids` that exist."""
        ...


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


class LocalCatalog:
    """Title search and metadata over a catalog table (`catalog.parquet` schema)."""

    def __init__(self, frame: pd.DataFrame):
        for col in ("item_id", "title"):
            if col not in frame.columns:
                raise DataError(f"catalog has no `{col}` column (columns: {', '.join(map(str, frame.columns))})")
        self._frame = frame.reset_index(drop=True)
        self._ids = self._frame["item_id"].astype(str).tolist()
        self._pos = {item_id: i for i, item_id in enumerate(self._ids)}
        self._titles = self._frame["title"].astype(str).str.lower().tolist()

    @classmethod
    def from_bundle(cls, bundle: str | Path) -> LocalCatalog:
        """Load `BUNDLE/catalog.parquet`; a `BundleError` says which command makes it when missing."""
        import pandas as pd

        from chatrec.bundle import Bundle

        path = Bundle(bundle).require("catalog.parquet")
        return cls(pd.read_parquet(path))

    def __len__(self) -> int:
        return len(self._ids)

    def row(self, i: int) -> dict[str, Any]:
        return {str(k): _plain(v) for k, v in self._frame.iloc[i].items() if k != "text"}

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Case-insensitive title match: titles starting with the query first, then word starts, then substrings."""
        q = " ".join(query.lower().split())
        if not q:
            return []
        word = re.compile(r"\b" + re.escape(q))
        ranked: list[tuple[int, int]] = []
        for i, title in enumerate(self._titles):
            if title.startswith(q):
                ranked.append((0, i))
            elif word.search(title):
                ranked.append((1, i))
            elif q in title:
                ranked.append((2, i))
        ranked.sort()
        return [self.row(i) for _, i in ranked[:limit]]

    def rows(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {i: self.row(self._pos[i]) for i in map(str, item_ids) if i in self._pos}


class RemoteCatalog:
    """The same look-ups through the server's `GET /v1/items` endpoint."""

    def __init__(self, client: ChatrecClient):
        self._client = client
        self._cache: dict[str, dict[str, Any]] = {}

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        from ui.client import EndpointError

        if not query.strip():
            return []
        try:
            found = self._client.search_items(query, limit=limit)
        except EndpointError as exc:
            if exc.status in (404, 405):
                raise DataError(NoCatalog.message) from None
            raise
        for row in found:
            self._cache[str(row.get("item_id"))] = row
        return found

    def rows(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {i: self._cache[i] for i in map(str, item_ids) if i in self._cache}


class NoCatalog:
    """Used when neither a bundle nor a catalog endpoint is known: search says how to enable it."""

    message = "catalog search needs `--bundle BUNDLE` or a server with `GET /v1/items`"

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        raise DataError(self.message)

    def rows(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {}

