"""Pure rendering for the chat UI: reasoning split, item cards, history rows, plain error text.

Nothing here imports gradio or talks to the network, so all of it is unit-tested on plain data.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_BLOCK_RE = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)
# metadata columns never shown on a card (the card shows title and reason itself; text is long)
_HIDDEN_META = {"item_id", "title", "text", "sid", "codes", "score", "reason", "rank"}
_REASON_MAX = 240


@dataclass(frozen=True)
class ItemCard:
    """One recommended item as the page shows it."""

    item_id: str
    title: str
    meta: tuple[str, ...] = ()
    reason: str = ""
    score: float | None = None
    sid: str | None = None
    rank: int = 1


@dataclass(frozen=True)
class HistoryEntry:
    """One item of the user's editable history."""

    item_id: str
    title: str
    action: str = "like"
    extra: Mapping[str, Any] = field(default_factory=dict)


# reasoning -------------------------------------------------------------------------------------
def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with (a tag still streaming in)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def split_reasoning(text: str) -> tuple[str, str]:
    """Split a (possibly half-streamed) answer into (reasoning, visible answer).

    Every closed `<think>…</think>` block goes to the reasoning; an unclosed `<think>` sends the
    rest of the text to the reasoning (it is still being written); a tag cut in half at the end
    of a streamed chunk is held back so it never flashes on the page. A stray `</think>` with no
    opening tag (chat templates that put `<think>` in the prompt) makes everything before it
    reasoning.
    """
    thoughts: list[str] = []
    if THINK_CLOSE in text and THINK_OPEN not in text.split(THINK_CLOSE, 1)[0]:
        head, text = text.split(THINK_CLOSE, 1)
        thoughts.append(head)

    def _take(m: re.Match[str]) -> str:
        thoughts.append(m.group(1))
        return ""

    answer = _THINK_BLOCK_RE.sub(_take, text)
    if THINK_OPEN in answer:
        answer, open_thought = answer.split(THINK_OPEN, 1)
        thoughts.append(open_thought[: len(open_thought) - _partial_tag_suffix(open_thought, THINK_CLOSE)])
    else:
        answer = answer[: len(answer) - _partial_tag_suffix(answer, THINK_OPEN)]
    reasoning = "\n\n".join(t.strip() for t in thoughts if t.strip())
    return reasoning, answer.strip()


def assistant_messages(text: str, *, show_reasoning: bool) -> list[dict[str, Any]]:
    """The chatbot messages for one assistant answer: an optional collapsible reasoning, then the answer."""
    reasoning, answer = split_reasoning(text)
    out: list[dict[str, Any]] = []
    if show_reasoning and reasoning:
        out.append({"role": "assistant", "content": reasoning, "metadata": {"title": "Reasoning"}})
    out.append({"role": "assistant", "content": answer or "…"})
    return out


def chat_display(turns: Sequence[Mapping[str, str]], *, show_reasoning: bool) -> list[dict[str, Any]]:
    """The chatbot's messages for a conversation of `{"user", "raw"}` turns (raw = the model's full text).

    An `error` key on a turn shows that plain message instead of an answer.
    """
    out: list[dict[str, Any]] = []
    for turn in turns:
        out.append({"role": "user", "content": turn["user"]})
        if turn.get("error"):
            out.append({"role": "assistant", "content": f"Error: {turn['error']}"})
        elif "raw" in turn:
            out.extend(assistant_messages(turn["raw"], show_reasoning=show_reasoning))
    return out


def conversation_for_server(turns: Sequence[Mapping[str, str]], request: str) -> list[dict[str, str]]:
    """The OpenAI messages sent for a new `request`: earlier turns without their reasoning or errors."""
    msgs: list[dict[str, str]] = []
    for turn in turns:
        if turn.get("error") or "raw" not in turn:
            continue
        answer = split_reasoning(turn["raw"])[1]
        if answer:
            msgs += [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": answer}]
    msgs.append({"role": "user", "content": request})
    return msgs


# item cards ------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    try:
        return len(value) == 0  # type: ignore[arg-type]
    except TypeError:
        return False


def _meta_text(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, (int, float))):
        seq = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(seq, list):
            return ", ".join(str(v) for v in seq)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if key in {"year", "categories", "genres"}:
        return str(value)
    return f"{key.replace('_', ' ')}: {value}"


def metadata_lines(row: Mapping[str, Any], *, limit: int = 4) -> tuple[str, ...]:
    """Short metadata strings for a catalog row: year, then categories, then other scalar columns.

    The year is skipped when the title already carries it (ML-100k titles read "Alien (1979)").
    """
    title = str(row.get("title") or "")
    out: list[str] = []
    ordered = ["year", "categories", "genres"] + [k for k in row if k not in {"year", "categories", "genres"}]
    for key in ordered:
        if key in _HIDDEN_META or key not in row or _is_missing(row[key]):
            continue
        text = _meta_text(key, row[key])
        if key == "year" and f"({text})" in title:
            continue
        if len(text) > 80:
            continue
        out.append(text)
        if len(out) >= limit:
            break
    return tuple(out)


def reason_from_answer(title: str, answer: str) -> str:
    """The words the answer says about `title`: the rest of the sentence or line after the title."""
    if not title or not answer:
        return ""
    from chatrec.chat import shown

    pos = -1
    # as catalogued, as the chat writes it ("Love Bug, The (1969)" -> "The Love Bug (1969)"), or without the year
    for form in dict.fromkeys([title, shown(title), re.sub(r"\s*\(\d{4}\)\s*$", "", title)]):
        pos = answer.find(form) if form else -1
        if pos >= 0:
            title = form
            break
    if pos < 0:
        return ""
    rest = answer[pos + len(title):]
    rest = re.split(r"\n|(?<=[.!?])\s", rest, maxsplit=1)[0]
    rest = re.sub(r"^[\s)\]\-–—:,;]+", "", rest).strip()
    if not re.search(r"\w", rest):
        return ""
    if len(rest) > _REASON_MAX:
        rest = rest[: _REASON_MAX - 1].rstrip() + "…"
    return rest


def make_cards(
    items: Sequence[Mapping[str, Any]],
    answer: str = "",
    catalog_rows: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ItemCard]:
    """Cards for the server's structured items, with catalog metadata and a reason for each.

    The reason is the server's `reason` field when it sends one, else what the answer text says
    after the item's title, else the item's rank and score.
    """
    cards = []
    for rank, item in enumerate(items, start=1):
        item_id = str(item.get("item_id", ""))
        row: Mapping[str, Any] = (catalog_rows or {}).get(item_id, {})
        title = str(item.get("title") or row.get("title") or item_id)
        score = item.get("score")
        score_f = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None
        reason = str(item.get("reason") or "").strip() or reason_from_answer(title, answer)
        if not reason:
            reason = f"Ranked #{rank} for your history" + (f" (score {score_f:.3f})" if score_f is not None else "")
        meta = metadata_lines({**row, **{k: v for k, v in item.items() if k not in row}})
        cards.append(ItemCard(item_id=item_id, title=title, meta=meta, reason=reason, score=score_f,
                              sid=item.get("sid"), rank=rank))
    return cards


def card_html(card: ItemCard) -> str:
    """One card as escaped HTML (title, metadata, reason); the like/dislike buttons sit beside it."""
    e = html.escape
    meta = " · ".join(e(m) for m in card.meta)
    score = f'<span class="chatrec-score">score {card.score:.3f}</span>' if card.score is not None else ""
    return (
        f'<div class="chatrec-card" data-item-id="{e(card.item_id, quote=True)}">'
        f'<div class="chatrec-card-title">{card.rank}. {e(card.title)}</div>'
        + (f'<div class="chatrec-card-meta">{meta}</div>' if meta else "")
        + f'<div class="chatrec-card-reason">{e(card.reason)}</div>'
        + (f'<div class="chatrec-card-foot">{score}</div>' if score else "")
        + "</div>"
    )


def cards_markdown(cards: Sequence[ItemCard]) -> str:
    """The cards as plain markdown (for logs and the non-HTML fallback)."""
    lines = []
    for c in cards:
        meta = f" — {' · '.join(c.meta)}" if c.meta else ""
        lines.append(f"{c.rank}. **{c.title}**{meta}\n   {c.reason}")
    return "\n".join(lines)


# history ---------------------------------------------------------------------------------------
def history_label(entry: HistoryEntry) -> str:
    return f"{entry.title} [{entry.action}]"


def history_payload(entries: Sequence[HistoryEntry]) -> list[dict[str, str]]:
    """The history as the server takes it: `[{"item_id", "action"}]`, oldest first."""
    return [{"item_id": e.item_id, "action": e.action} for e in entries]


# status lines ----------------------------------------------------------------------------------
def understood_line(extra: Mapping[str, Any] | None) -> str:
    """What the server understood of a turn, from its `chatrec` field: filters and dialogue state."""
    if not extra:
        return ""
    filters = extra.get("filters") or {}
    state = extra.get("state") or {}
    parts = []
    if filters.get("categories"):
        parts.append("categories " + ", ".join(filters["categories"]))
    if filters.get("implied_categories"):
        parts.append("from your words: " + ", ".join(filters["implied_categories"]))
    if filters.get("avoid_categories"):
        parts.append("avoiding " + ", ".join(filters["avoid_categories"]))
    years = filters.get("years")
    if years:
        lo, hi = years
        parts.append(f"before {hi + 1}" if lo <= 0 else f"from {lo}" if hi >= 9999 else f"{lo}-{hi}")
    liked = [str(x.get("title")) for x in state.get("liked") or []]
    if liked:
        parts.append("liked: " + ", ".join(liked[:5]))
    disliked = [str(x.get("title")) for x in state.get("disliked") or []]
    if disliked:
        parts.append("disliked: " + ", ".join(disliked[:5]))
    if state.get("shown"):
        parts.append(f"{len(state['shown'])} shown so far")
    return ("Understood: " + "; ".join(parts) + ".") if parts else ""


def status_html(message: str, *, kind: str = "info") -> str:
    """A one-line status banner; `kind` is info, ok or error."""
    if kind not in {"info", "ok", "error"}:
        raise ValueError(f"status kind must be info, ok or error, got {kind!r}")
    if not message:
        return ""
    return f'<div class="chatrec-status chatrec-status-{kind}" role="status">{html.escape(message)}</div>'
