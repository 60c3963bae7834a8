"""Durable append-only JSONL logs in the interaction schema (`BUNDLE/logs/*.jsonl`).

Each append writes whole lines with one `write` on an `O_APPEND` descriptor, then `fsync`, under a
thread lock and a file lock (several server processes may share a bundle), so concurrent posts
never lose or interleave lines and an acknowledged line survives a crash.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

FEEDBACK_FILE = "feedback.jsonl"
CHATS_FILE = "chats.jsonl"


def interaction_row(user_id: str, item_id: str, action: str, timestamp: dt.datetime | None = None,
                    context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One row of the interaction schema; `timestamp` ISO 8601 UTC, `context` a JSON string."""
    ts = timestamp or dt.datetime.now(dt.timezone.utc)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    row: dict[str, Any] = {"user_id": str(user_id), "item_id": str(item_id), "action": str(action),
                           "timestamp": ts.astimezone(dt.timezone.utc).isoformat()}
    if context is not None:
        row["context"] = json.dumps(context, ensure_ascii=False, sort_keys=True)
    return row


class JsonlLog:
    """An append-only, fsynced JSONL file."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file_lock = FileLock(str(self.path) + ".lock")

    def append(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Append `rows` as lines; returns how many were written (all or none)."""
        if not rows:
            return 0
        data = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        with self._lock, self._file_lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
        return len(rows)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
