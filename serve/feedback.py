"""Durable append-only JSONL logs in the interaction schema (`BUNDLE/logs/*.jsonl`).

Each append writes whole lines with one `write` on an `O_APPEND` descriptor, then `fsync`, under a
thread lock and a file lock (several server processes may share a bundle), so concurrent posts
never lose or interleave lines and an acknowledged line survives a crash.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

FEEDBACK_FILE = "feedback.jsonl"
CHATS_FILE = "chats.jsonl"


def _utc(ts: dt.datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.astimezone(dt.timezone.utc).isoformat()


def interaction_row(user_id: str, item_id: str, action: str, timestamp: dt.datetime | None = None,
                    context: Mapping[str, Any] | None = None, *,
                    client_timestamp: dt.datetime | None = None) -> dict[str, Any]:
    """One row of the interaction schema; `timestamp` ISO 8601 UTC, `context` a JSON string.

    The server logs with `timestamp=None` (its own clock): a client's clock cannot move an event
    before a training cut. The client's time, when sent, is kept as `client_timestamp`.
    """
    row: dict[str, Any] = {"user_id": str(user_id), "item_id": str(item_id), "action": str(action),
                           "timestamp": _utc(timestamp or dt.datetime.now(dt.timezone.utc))}
    if client_timestamp is not None:
        row["client_timestamp"] = _utc(client_timestamp)
    if context is not None:
        row["context"] = json.dumps(context, ensure_ascii=False, sort_keys=True)
    return row


class LogFullError(Exception):
    """The log reached its size cap (HTTP 507); nothing of the refused append was written."""


class JsonlLog:
    """An append-only, fsynced JSONL file, refused past `max_bytes`."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int | None = None):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file_lock = FileLock(str(self.path) + ".lock")

    def append(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Append `rows` as lines; returns how many were written (all or none)."""
        if not rows:
            return 0
        data = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        with self._lock, self._file_lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = _drop_partial_line(fd, self.path.name)
                if self.max_bytes is not None and size + len(data) > self.max_bytes:
                    raise LogFullError(f"the log {self.path.name} is full ({size} of {self.max_bytes} bytes); "
                                       "rotate it (finetune on it, then move it away) or raise --max-log-bytes")
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


def _drop_partial_line(fd: int, name: str) -> int:
    """Cut a last line without its newline (a write cut short by a crash: never acknowledged, since
    an append is acknowledged only after its fsync), so the next record starts on its own line.
    Returns the file's size afterwards."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    logging.getLogger("chatrec.serve").warning("%s ended in a partial line (%d bytes, from an interrupted write); "
                                               "dropped it", name, size - end)
    return end


class RateLimiter:
    """Token buckets per client key: `per_minute` events, refilled continuously, burst = one minute."""

    def __init__(self, per_minute: int, max_keys: int = 10_000):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, n: int) -> float:
        """Take `n` tokens for `key`: 0.0 when allowed, else the seconds to wait before retrying."""
        import time

        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
            if n > level:
                self._buckets[key] = (level, now)
                return max(1.0, (n - level) / self.rate) if n <= self.capacity else float("inf")
            if len(self._buckets) >= self.max_keys and key not in self._buckets:  # bounded memory
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.capacity}
                if len(self._buckets) >= self.max_keys:
                    self._buckets.clear()
            self._buckets[key] = (level - n, now)
            return 0.0
