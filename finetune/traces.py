"""Reasoning traces built from evidence in the data, not from the label alone.

Evidence for recommending `target` to a user at time t is read from the user's history before t:
which liked items share genres, a SID prefix (same level-0 code: near in the semantic space) or
a decade with the target, and which genres the user liked and disliked overall. The trace says
that, and only then names the kind of item that fits. A teacher LLM (`finetune.teacher`) may
rewrite the same evidence in freer words; the template here is the fallback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatrec import prompts
from chatrec.prompts import decade_words, year_from  # noqa: F401  (year_from re-exported for finetune.data)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ItemInfo:
    """What traces and requests know about a catalog item."""

    item_id: str
    title: str
    text: str
    categories: tuple[str, ...]
    year: int | None
    codes: tuple[int, ...]

    @property
    def decade(self) -> int | None:
        return None if self.year is None else (self.year // 10) * 10


@dataclass
class Evidence:
    """Facts from a user's past that bear on one recommendation."""

    target: ItemInfo
    shared_genre: list[tuple[ItemInfo, list[str]]] = field(default_factory=list)  # liked items + shared genres
    shared_code: list[ItemInfo] = field(default_factory=list)  # liked items with the same level-0 code
    same_decade: list[ItemInfo] = field(default_factory=list)  # liked items from the target's decade
    liked_genres: list[tuple[str, int]] = field(default_factory=list)
    disliked_genres: list[tuple[str, int]] = field(default_factory=list)
    disliked: list[ItemInfo] = field(default_factory=list)
    n_history: int = 0

    def facts(self) -> list[str]:
        """Plain-sentence facts, used by the template and sent to a teacher."""
        out = []
        if self.liked_genres:
            out.append("Liked genres so far: " + ", ".join(f"{g} ({n})" for g, n in self.liked_genres) + ".")
        if self.disliked_genres:
            out.append("Disliked genres: " + ", ".join(f"{g} ({n})" for g, n in self.disliked_genres) + ".")
        for item, genres in self.shared_genre:
            out.append(f"Liked {item.title}, which shares {'/'.join(genres)} with the candidate.")
        for item in self.shared_code:
            out.append(f"Liked {item.title}, which sits close to the candidate in the catalog (same first code).")
        if self.same_decade and self.target.decade is not None:
            titles = ", ".join(i.title for i in self.same_decade)
            out.append(f"Liked films from the {decade_words(self.target.decade)}: {titles}.")
        for item in self.disliked:
            out.append(f"Disliked {item.title}.")
        cats = "/".join(self.target.categories) or "uncategorised"
        when = f" from {self.target.year}" if self.target.year else ""
        out.append(f"Candidate: {self.target.title}, {cats}{when}.")
        return out


def gather_evidence(
    history: Sequence[tuple[ItemInfo, str]],
    target: ItemInfo,
    *,
    positive_actions: Sequence[str] = ("like",),
    negative_actions: Sequence[str] = ("dislike",),
    max_items: int = 2,
) -> Evidence:
    """Evidence for `target` from `history` (item, action) pairs that happened before the target."""
    ev = Evidence(target=target, n_history=len(history))
    liked = [it for it, a in history if a in positive_actions]
    disliked = [it for it, a in history if a in negative_actions]
    tgt_genres = set(target.categories)
    for it in reversed(liked):  # most recent first
        shared = sorted(tgt_genres & set(it.categories))
        if shared and len(ev.shared_genre) < max_items and it.item_id != target.item_id:
            ev.shared_genre.append((it, shared))
        if (target.codes and it.codes and it.codes[0] == target.codes[0] and len(ev.shared_code) < max_items
                and it.item_id != target.item_id and all(it is not x for x, _ in ev.shared_genre)):
            ev.shared_code.append(it)
        if (target.decade is not None and it.decade == target.decade and len(ev.same_decade) < max_items
                and it.item_id != target.item_id):
            ev.same_decade.append(it)
    ev.liked_genres = Counter(g for it in liked for g in it.categories).most_common(3)
    ev.disliked_genres = Counter(g for it in disliked for g in it.categories).most_common(2)
    ev.disliked = list(reversed(disliked))[:1]
    return ev


def template_trace(ev: Evidence, word: str = "film") -> str:
    """A short reasoning paragraph from the evidence (no tags); `word` names an item ("film", "product")."""
    from chatrec.prompts import plural

    parts = []
    if ev.liked_genres:
        top = ", ".join(g for g, _ in ev.liked_genres)
        parts.append(f"The user mostly likes {top}.")
    elif ev.n_history:
        parts.append("The user has no clear likes yet.")
    else:
        parts.append("There is no history yet, so I go by the request.")
    if ev.disliked_genres:
        parts.append(f"They disliked {', '.join(g for g, _ in ev.disliked_genres)} before"
                     + (f" ({ev.disliked[0].title})." if ev.disliked else "."))
    if ev.shared_genre:
        it, genres = ev.shared_genre[0]
        parts.append(f"They liked {it.title}, so another {'/'.join(genres)} {word} fits.")
    if ev.shared_code:
        parts.append(f"{ev.shared_code[0].title} was a hit, so something close to it is a good bet.")
    if ev.same_decade and ev.target.decade is not None:
        parts.append(f"They enjoy {plural(word)} from the {decade_words(ev.target.decade)}.")
    cats = "/".join(ev.target.categories[:2]) or word
    when = f" from the {decade_words(ev.target.decade)}" if ev.target.decade is not None else ""
    article = "an" if cats[:1].lower() in "aeiou" else "a"
    parts.append(f"I will suggest {article} {cats}{when}.")
    return " ".join(parts)


def wrap_think(text: str) -> str:
    return f"{THINK_OPEN}{text.strip()}{THINK_CLOSE}"


def explanation(ev: Evidence, word: str = "film") -> str:
    """One clause after a recommended item: why it fits, from the strongest evidence."""
    from chatrec.prompts import plural

    if ev.shared_genre:
        it, genres = ev.shared_genre[0]
        return f"{'/'.join(genres)} like {it.title}, which you liked"
    if ev.shared_code:
        return f"close to {ev.shared_code[0].title}, which you liked"
    if ev.same_decade and ev.target.decade is not None:
        return f"from the {decade_words(ev.target.decade)}, like {plural(word)} you enjoyed"
    cats = "/".join(ev.target.categories[:2])
    return f"a well-liked {cats}" if cats else "a popular pick"


def taste_summary(history: Sequence[tuple[ItemInfo, str]], *, positive_actions: Sequence[str] = ("like",),
                  negative_actions: Sequence[str] = ("dislike",), max_words: int = 24, word: str = "film") -> str:
    """One line of long-term preferences over a whole history (the serving side calls the same core)."""
    return prompts.taste_summary([(it.categories, it.year, a) for it, a in history],
                                 positive_actions=positive_actions, negative_actions=negative_actions,
                                 max_words=max_words, word=word)
