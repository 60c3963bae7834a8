"""Chat prompts shared by training-data building and serving: one format, one place.

A history is an interleaved `SID ACTION SID ACTION ...` string. Retrieval prompts end with the
assistant's generation prompt followed by `<|sid_begin|>`, so constrained beam search starts on
level 0; ranking reads the action-token distribution right after the candidate's span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatrec.tokens import action_token, sid_string

SYSTEM_PROMPT = (
    "You are chatrec, a movie recommender. Items are written as semantic IDs between "
    "<|sid_begin|> and <|sid_end|>; user reactions are action tokens such as <|act_like|>. "
    "Think briefly inside <think></think>, then recommend real catalog items."
)

DEFAULT_REQUEST = "What should I watch next?"


@dataclass(frozen=True)
class HistoryEvent:
    """One past interaction: the item's codes, the action, and optionally its title."""

    codes: tuple[int, ...]
    action: str
    title: str | None = None


def history_text(events: Sequence[HistoryEvent], *, with_titles: bool = False) -> str:
    """`SID ACTION SID ACTION ...`, optionally with `(title)` after each SID."""
    parts = []
    for ev in events:
        title = f" ({ev.title})" if with_titles and ev.title else ""
        parts.append(f"{sid_string(ev.codes)}{title} {action_token(ev.action)}")
    return " ".join(parts)


def next_item_messages(
    events: Sequence[HistoryEvent],
    request: str | None = None,
    *,
    summary: str | None = None,
    with_titles: bool = False,
) -> list[dict[str, str]]:
    """System + user turn asking for the next item given a history (and an optional text request)."""
    lines = []
    if summary:
        lines.append(f"Long-term taste: {summary}")
    lines.append(f"History: {history_text(events, with_titles=with_titles) or '(none)'}")
    lines.append(request or DEFAULT_REQUEST)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


def action_messages(
    events: Sequence[HistoryEvent], candidate_codes: Sequence[int], *, with_titles: bool = False
) -> list[dict[str, str]]:
    """System + user turn asking how the user will react to `candidate_codes`."""
    hist = history_text(events, with_titles=with_titles) or "(none)"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"History: {hist}\nCandidate: {sid_string(candidate_codes)}\nReaction?"},
    ]


def next_item_answer(codes: Sequence[int]) -> str:
    """The assistant target of the next-item task: the span alone, so retrieval can start on it."""
    return sid_string(codes)


def action_answer(action: str) -> str:
    """The assistant target of the action-prediction task: one action token."""
    return action_token(action)
