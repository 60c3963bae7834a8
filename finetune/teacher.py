"""Optional teacher LLM behind any OpenAI-compatible endpoint, to phrase reasoning traces.

The teacher gets the evidence facts (never the user's future) and is asked for two or three
sentences of reasoning. Answers are cached on disk (JSONL keyed by a hash of model + prompt), calls
are rate-limited, and any failure (connection refused, timeout, HTTP error, empty answer) falls
back to the template trace, counted in `Teacher.stats`. Plain `urllib`, so no client package needed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chatrec.errors import ConfigError

TEACHER_SYSTEM = (
    "You write the short private reasoning of a movie recommender. Use only the facts given. "
    "Two or three sentences, no lists, do not name the candidate's title."
)


@dataclass
class TeacherConfig:
    url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (None: templates only)."})
    model: str = field(default="teacher", metadata={"help": "Model name sent to the endpoint."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for the endpoint, if it needs one."})
    max_requests_per_s: float = field(default=5.0, metadata={"help": "Rate limit on teacher calls (> 0)."})
    timeout_s: float = field(default=20.0, metadata={"help": "Per-request timeout in seconds (> 0)."})
    max_tokens: int = field(default=120, metadata={"help": "Max tokens the teacher may write per trace."})
    max_failures: int = field(default=3, metadata={"help": "After this many failures in a row the teacher is switched off for the run."})
    cache_path: str | None = field(default=None, metadata={"help": "JSONL cache file (default: BUNDLE/train/teacher_cache.jsonl)."})

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"`teacher.url` must start with http:// or https://, got {self.url!r}")
        if self.max_requests_per_s <= 0:
            raise ConfigError(f"`teacher.max_requests_per_s` must be > 0, got {self.max_requests_per_s}")
        if self.timeout_s <= 0:
            raise ConfigError(f"`teacher.timeout_s` must be > 0, got {self.timeout_s}")


class Teacher:
    """Calls the endpoint with caching, rate limiting and template fallback."""

    def __init__(self, config: TeacherConfig, cache_path: str | Path | None = None):
        self.config = config
        path = cache_path or config.cache_path
        self.cache_path = Path(path) if path else None
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last_call = 0.0
        self._failures_in_row = 0
        self.stats = {"calls": 0, "cached": 0, "fallback": 0, "ok": 0}
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self._cache[rec["key"]] = rec["text"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line after a kill

    @property
    def enabled(self) -> bool:
        return self.config.url is not None and self._failures_in_row < self.config.max_failures

    def trace(self, facts: Sequence[str], fallback: str) -> str:
        """Reasoning text for `facts`, or `fallback` when the teacher is off or fails."""
        if self.config.url is None:
            return fallback
        prompt = "Facts:\n" + "\n".join(f"- {f}" for f in facts) + "\nWrite the reasoning."
        key = hashlib.sha256(f"{self.config.model}\n{prompt}".encode()).hexdigest()
        if key in self._cache:
            self.stats["cached"] += 1
            return self._cache[key]
        if not self.enabled:
            self.stats["fallback"] += 1
            return fallback
        text = self._call(prompt)
        if not text:
            self._failures_in_row += 1
            self.stats["fallback"] += 1
            return fallback
        self._failures_in_row = 0
        self.stats["ok"] += 1
        self._remember(key, text)
        return text

    def _call(self, prompt: str) -> str | None:
        self._wait_for_slot()
        self.stats["calls"] += 1
        body = json.dumps({
            "model": self.config.model,
            "messages": [{"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": prompt}],
            "max_tokens": self.config.max_tokens,
            "temperature": 0.3,
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        url = self.config.url.rstrip("/") + "/chat/completions"  # type: ignore[union-attr]
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                data = json.loads(resp.read().decode())
            text = data["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError):
            return None
        text = " ".join(str(text or "").replace("<think>", "").replace("</think>", "").split())
        return text or None

    def _wait_for_slot(self) -> None:
        with self._lock:
            gap = 1.0 / self.config.max_requests_per_s
            wait = self._last_call + gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_call = time.monotonic()

    def _remember(self, key: str, text: str) -> None:
        self._cache[key] = text
        if self.cache_path:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a") as fh:
                fh.write(json.dumps({"key": key, "text": text}) + "\n")
