"""`TokenMap`: which token id means which span marker, SID code and action (`model/chatrec_tokens.json`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatrec import tokens
from chatrec.errors import BundleError, DataError

FORMAT_VERSION = 1


@dataclass
class TokenMap:
    """Token ids of the span markers, the level-specific code tokens and the action tokens."""

    sid_begin: int
    sid_end: int
    codes: dict[str, int] = field(default_factory=dict)    # "L_C" -> token id of <|sL_C|>
    actions: dict[str, int] = field(default_factory=dict)  # action name -> token id of <|act_NAME|>
    vocab_size: int = 0                                     # len(tokenizer) after extension
    # the events reading (finetune.events): {"first": id of <|ev_A0_0|>, "actions": [A names], "item_ids": [I ids],
    # "max_len": events a prompt holds}; token id of (action a, item i) = first + a * I + i
    events: dict[str, Any] | None = None

    # lookups ---------------------------------------------------------------------------------
    def code_id(self, level: int, code: int) -> int:
        """Token id of `<|sL_C|>`; raises `DataError` when the code has no token."""
        try:
            return self.codes[f"{int(level)}_{int(code)}"]
        except KeyError:
            raise DataError(f"code {code} at level {level} has no token; re-run `chatrec tokenizer extend`"
                            ) from None

    def action_id(self, action: str) -> int:
        try:
            return self.actions[action]
        except KeyError:
            raise DataError(f"action {action!r} has no token (known: {sorted(self.actions)}); "
                            "re-run `chatrec tokenizer extend`") from None

    @property
    def n_levels(self) -> int:
        """Number of code levels (the disambiguation level included)."""
        return 1 + max((int(k.split("_")[0]) for k in self.codes), default=-1)

    @property
    def level_sizes(self) -> list[int]:
        """Per level: one more than the largest code with a token."""
        sizes = [0] * self.n_levels
        for key in self.codes:
            level, code = (int(x) for x in key.split("_"))
            sizes[level] = max(sizes[level], code + 1)
        return sizes

    def level_token_ids(self, level: int) -> list[int]:
        """Token ids of every code token of `level`, ordered by code."""
        pairs = sorted((int(k.split("_")[1]), v) for k, v in self.codes.items() if k.split("_")[0] == str(level))
        return [v for _, v in pairs]

    def meanings(self) -> dict[int, str]:
        """token id -> token string, for every token this map knows."""
        out = {self.sid_begin: tokens.SID_BEGIN, self.sid_end: tokens.SID_END}
        for key, tid in self.codes.items():
            level, code = (int(x) for x in key.split("_"))
            out[tid] = tokens.code_token(level, code)
        for name, tid in self.actions.items():
            out[tid] = tokens.action_token(name)
        return dict(sorted(out.items()))

    def all_ids(self) -> list[int]:
        return sorted(self.meanings())

    def sid_ids(self, codes: Sequence[int]) -> list[int]:
        """Code token ids of one item's codes (no span markers)."""
        return [self.code_id(level, c) for level, c in enumerate(codes)]

    def event_ids(self, action: str) -> np.ndarray:
        """Token ids of `<|ev_ACTION_i|>` for every item i of the events vocabulary, in its item order."""
        if not self.events:
            raise DataError("this model has no event tokens (it was not finetuned with `--reading events`)")
        actions = list(self.events["actions"])
        if action not in actions:
            raise DataError(f"action {action!r} has no event tokens (known: {actions})")
        n = len(self.events["item_ids"])
        return int(self.events["first"]) + actions.index(action) * n + np.arange(n, dtype=np.int64)

    @property
    def event_range(self) -> tuple[int, int]:
        """[start, stop) of the event token ids ((0, 0) without them)."""
        if not self.events:
            return (0, 0)
        first = int(self.events["first"])
        return (first, first + len(self.events["actions"]) * len(self.events["item_ids"]))

    # persistence -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "sid_begin": self.sid_begin, "sid_end": self.sid_end,
                "codes": dict(self.codes), "actions": dict(self.actions), "vocab_size": self.vocab_size,
                **({"events": self.events} if self.events else {})}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON to `path` (atomic)."""
        from chatrec.bundle import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenMap:
        path = Path(path)
        if path.is_dir():
            path = path / "chatrec_tokens.json"
        if not path.exists():
            raise BundleError(f"{path} does not exist; run `chatrec tokenizer extend` first")
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: token map format {data.get('format_version')}, expected {FORMAT_VERSION}")
        return cls(sid_begin=int(data["sid_begin"]), sid_end=int(data["sid_end"]),
                   codes={k: int(v) for k, v in data["codes"].items()},
                   actions={k: int(v) for k, v in data["actions"].items()},
                   vocab_size=int(data.get("vocab_size", 0)), events=data.get("events"))
