"""Chat prompts shared by training-data building and serving: one format, one place.

A history is the compact event string `ACTION c0 c1 .. cL ACTION c0 ...` with no spaces and no span
markers: each event is its action token followed by the item's code tokens (level-specific codes
make every item boundary unambiguous), so an event costs `1 + levels + 1` tokens. The action comes
first so that a prompt ending in a positive action (`<|act_like|>`) asks for the next *liked* item.
That same string is a training sequence (`chatrec data build` writes one per user, and the loss
falls on every token of it) and the history inside chat prompts.

Retrieval has two prompts: with no text request, the plain sequence prompt (history + positive
action), exactly what sequence training sees; with a request, the chat prompt ending in the
assistant's generation prompt followed by `<|sid_begin|>`. Ranking reads the action-token
distribution right after the candidate's span.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from chatrec.tokens import action_token, code_token, sid_string

SYSTEM_PROMPT = (
    "You are chatrec, a movie recommender. Items are written as semantic IDs between "
    "<|sid_begin|> and <|sid_end|>; user reactions are action tokens such as <|act_like|>. "
    "Think briefly inside <think></think>, then recommend real catalog items."
)

DEFAULT_REQUEST = "What should I watch next?"
VERBS = {"movie": "watch", "film": "watch", "show": "watch", "series": "watch", "video": "watch", "book": "read",
         "article": "read", "song": "listen to", "track": "listen to", "album": "listen to", "podcast": "listen to",
         "game": "play", "recipe": "cook", "product": "get", "item": "try"}


def plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


@dataclass(frozen=True)
class Domain:
    """The words for one catalog: what an item is and what a user does with it (`data import --domain`).

    `Domain("movie")` gives exactly the prompts and traces the MovieLens models were trained on.
    """

    item: str = "movie"

    @property
    def items(self) -> str:
        return plural(self.item)

    @property
    def verb(self) -> str:
        return VERBS.get(self.item, "try")

    @property
    def word(self) -> str:
        """The noun in training texts and traces ("film" for movies, as the trained data says)."""
        return "film" if self.item == "movie" else self.item

    @property
    def system_prompt(self) -> str:
        return SYSTEM_PROMPT if self.item == "movie" else SYSTEM_PROMPT.replace(
            "a movie recommender", f"a recommender of {self.items}")

    @property
    def request(self) -> str:
        return f"What should I {self.verb} next?"


MOVIE = Domain()
# actions whose names say what they mean, for catalogs that do not declare their positive/negative actions
POSITIVE_NAMES = ("like", "love", "favorite", "favourite", "purchase", "buy", "order", "rate_high", "save", "add_to_cart")
NEGATIVE_NAMES = ("dislike", "hate", "skip", "return", "hide", "rate_low", "remove", "report")
DEFAULT_HISTORY_LEN = 20
DEFAULT_SUMMARY_WORDS = 24
_YEAR_RE = re.compile(r"\((\d{4})\)")


@dataclass(frozen=True)
class HistoryEvent:
    """One past interaction: the item's codes, the action, and optionally its title."""

    codes: tuple[int, ...]
    action: str
    title: str | None = None


def event_text(codes: Sequence[int], action: str) -> str:
    """One history event: `<|act_A|><|s0_C|>...<|sL_C|>` (the action before the item it describes)."""
    return action_token(action) + "".join(code_token(level, int(c)) for level, c in enumerate(codes))


def history_text(events: Sequence[HistoryEvent], *, with_titles: bool = False) -> str:
    """The compact event string `ACTION CODES ACTION CODES ...`, optionally with ` (title) ` after each item."""
    parts = []
    for ev in events:
        title = f" ({ev.title}) " if with_titles and ev.title else ""
        parts.append(event_text(ev.codes, ev.action) + title)
    return "".join(parts).strip()


def sequence_prompt(events: Sequence[HistoryEvent], next_action: str) -> str:
    """The plain-sequence retrieval prompt: the history, then the action the next item should get."""
    return history_text(events) + action_token(next_action)


def tokens_per_event(n_levels: int) -> int:
    """Tokens one history event costs: its action + one code per level (disambiguation level included)."""
    return 1 + n_levels


KV_BLOCK = 32  # KV-cache block of the vLLM engine: the smallest its CPU attention kernels take
MAX_TRIM = 0.125  # the most of a history `block_trimmed` drops (its oldest events)


def block_trimmed(n_events: int, per_event: int, extra: int = 1, *, block: int = KV_BLOCK,
                  max_trim: float = MAX_TRIM) -> int:
    """How many of the `n_events` most recent events a sequence prompt of `per_event * n + extra`
    tokens keeps so that it ends as few tokens past a whole `block` as possible, dropping at most
    `max_trim` of the events (the oldest) and as few as possible for that.

    vLLM's prefix cache holds whole KV blocks only, so every retrieval beam recomputes the prompt's
    partial last block: up to `block - 1` tokens per beam. A prompt that ends one token past a block
    costs each beam two. Exact on every engine: the prompt is a shorter history that training saw
    (windows of every length), never filler the model did not see.
    """
    if n_events < 1 or per_event * n_events + extra <= block:
        return max(n_events, 0)
    fewest = n_events - int(n_events * max_trim)
    return min(range(n_events, fewest - 1, -1), key=lambda n: (per_event * n + extra) % block)


def next_item_messages(
    events: Sequence[HistoryEvent],
    request: str | None = None,
    *,
    summary: str | None = None,
    with_titles: bool = False,
    domain: Domain = MOVIE,
) -> list[dict[str, str]]:
    """System + user turn asking for the next item given a history (and an optional text request)."""
    lines = []
    if summary:
        lines.append(f"Long-term taste: {summary}")
    lines.append(f"History: {history_text(events, with_titles=with_titles) or '(none)'}")
    lines.append(request or domain.request)
    return [
        {"role": "system", "content": domain.system_prompt},
        {"role": "user", "content": "\n".join(lines)},
    ]


def action_messages(
    events: Sequence[HistoryEvent], candidate_codes: Sequence[int], *, with_titles: bool = False,
    domain: Domain = MOVIE,
) -> list[dict[str, str]]:
    """System + user turn asking how the user will react to `candidate_codes`."""
    hist = history_text(events, with_titles=with_titles) or "(none)"
    return [
        {"role": "system", "content": domain.system_prompt},
        {"role": "user", "content": f"History: {hist}\nCandidate: {sid_string(candidate_codes)}\nReaction?"},
    ]


def next_item_answer(codes: Sequence[int]) -> str:
    """The assistant target of the next-item task: the span alone, so retrieval can start on it."""
    return sid_string(codes)


def action_answer(action: str) -> str:
    """The assistant target of the action-prediction task: one action token."""
    return action_token(action)


def year_from(title: str, value: object = None) -> int | None:
    """The item's year: the `year` column when set, else `(YYYY)` in the title."""
    try:
        if value is not None and value == value:  # not NaN / NA
            return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        pass
    m = _YEAR_RE.search(title or "")
    return int(m.group(1)) if m else None


def decade_words(decade: int) -> str:
    """1990 -> "90s", 2000 -> "2000s"."""
    return f"{decade % 100:02d}s" if decade < 2000 else f"{decade}s"


def taste_summary(
    history: Sequence[tuple[Sequence[str], int | None, str]],
    *,
    positive_actions: Sequence[str] = ("like",),
    negative_actions: Sequence[str] = ("dislike",),
    max_words: int = DEFAULT_SUMMARY_WORDS,
    word: str = "film",
) -> str:
    """One line of long-term preferences over a whole history of (categories, year, action)."""
    liked = Counter(g for cats, _, a in history if a in positive_actions for g in cats).most_common(3)
    disliked = Counter(g for cats, _, a in history if a in negative_actions for g in cats).most_common(2)
    decades = Counter(y // 10 * 10 for _, y, a in history if a in positive_actions and y is not None)
    parts = [f"{len(history)} past events"]
    if liked:
        parts.append("likes " + ", ".join(g for g, _ in liked))
    if disliked:
        parts.append("dislikes " + ", ".join(g for g, _ in disliked))
    if decades:
        parts.append(f"mostly {decade_words(decades.most_common(1)[0][0])} {plural(word)}")
    words = "; ".join(parts).split()
    return " ".join(words[:max_words])


def action_roles(available: Sequence[str], positive: Sequence[str] = (), negative: Sequence[str] = ()
                 ) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(positive actions, negative actions, inferred) for a log whose actions are `available`.

    Declared roles are kept where the log has them. Undeclared ones are read from the action names
    (`POSITIVE_NAMES`, `NEGATIVE_NAMES`); when no name says "positive", every action that is not
    negative counts as positive. `inferred` is True when any role came from the names.
    """
    have = list(dict.fromkeys(str(a) for a in available))
    pos = tuple(a for a in positive if a in have)
    neg = tuple(a for a in negative if a in have)
    inferred = False
    if not neg:
        neg, inferred = tuple(a for a in NEGATIVE_NAMES if a in have), inferred or not negative
    if not pos:
        pos = tuple(a for a in POSITIVE_NAMES if a in have) or tuple(a for a in have if a not in neg)
        inferred = True
    return pos, neg, inferred
