"""Turn generated token ids into chat text: SID spans become item titles, items are collected.

Incremental, so the same code renders a streamed answer (text deltas) and a whole one. Free
text is decoded segment by segment (a partial UTF-8 character is held back); a span is held until
`<|sid_end|>` closes it, then the item's title is emitted and the item recorded with its score
(sum of the code tokens' log-probs). A span cut off by `max_tokens` is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from chatrec.constrained import ConstraintCore
from chatrec.engine import TokenStep


@dataclass
class RenderedItem:
    item_id: str
    title: str
    sid: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, "sid": self.sid,
                "score": None if math.isnan(self.score) else self.score}


@dataclass
class SpanRenderer:
    """Feed `TokenStep`s; get text deltas; read `.items` and `.text` at the end."""

    tokenizer: Any
    core: ConstraintCore
    titles: dict[str, str]
    sids: dict[str, str]
    items: list[RenderedItem] = field(default_factory=list)
    text: str = ""
    n_tokens: int = 0
    _segment: list[int] = field(default_factory=list)
    _emitted: int = 0
    _span: list[int] | None = None
    _span_score: float = 0.0

    def feed(self, step: TokenStep) -> str:
        """Consume one token; return the text it completes (may be empty)."""
        self.n_tokens += 1
        tid = step.token_id
        span = self.core.span
        if tid == span.sid_begin:
            delta = self._flush()
            self._span, self._span_score = [], 0.0
            return delta
        if self._span is not None:
            if tid == span.sid_end:
                idx = self.core.trie.item_index(self._span)
                self._span = None
                if idx is None:  # cannot happen under the constraint; never show a broken item
                    return ""
                item_id = str(self.core.trie.item_ids[idx])
                title = self.titles.get(item_id, item_id)
                self.items.append(RenderedItem(item_id, title, self.sids.get(item_id, ""), self._span_score))
                self.text += title
                return title
            self._span.append(tid)
            self._span_score += step.logprob
            return ""
        self._segment.append(tid)
        decoded = self.tokenizer.decode(self._segment, skip_special_tokens=False)
        if decoded.endswith("\ufffd"):
            return ""
        delta = decoded[self._emitted:]
        self._emitted = len(decoded)
        self.text += delta
        return delta

    def open_span(self) -> None:
        """The prompt ended with `<|sid_begin|>`: start inside a span."""
        self._span, self._span_score = [], 0.0

    def _flush(self) -> str:
        if not self._segment:
            return ""
        decoded = self.tokenizer.decode(self._segment, skip_special_tokens=False)
        delta = decoded[self._emitted:]
        self.text += delta
        self._segment, self._emitted = [], 0
        return delta

    def finish(self) -> str:
        """Flush held text at the end; an open span is dropped."""
        self._span = None
        return self._flush()
