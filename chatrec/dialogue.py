"""A chat turn, answered from the conversation's state: the one entry point is `Conversation.answer`.

The API is stateless, so the state is rebuilt from the messages every turn, in order:

- **Assistant messages**: the numbered lines of an answer ("1. Title (year): ...") are the items
  it showed (matched to the catalog by their exact shown title). Items shown once are not shown
  again in the same conversation.
- **User messages** (read by `chatrec.chat.understand` for titles, named categories, years and
  K, and by the bundle's text encoder, `chatrec.understanding`, for what the words imply):
  - a title after "loved / liked ..." is liked, after "hated / didn't like ..." disliked, after
    "not / except / seen / watched ..." excluded;
  - "the first / second / last one", "#2", "number 2" point into the last list: liked ("more like
    the second one"), or disliked / excluded when negative or seen words come before them;
  - a category named or implied replaces the active categories (a named one is a hard filter,
    an implied one ranks its items first); one under a negation ("not a comedy", "less violent",
    "no horror") is avoided from then on (a hard filter), until it is asked for again;
  - a year or decade replaces the active years ("nothing from before 2000" means from 2000 on); "older / earlier" means before the oldest item of
    the last list, "newer / more recent" after the newest one (when nothing that fits is, before the
    newest / after the oldest, and the answer says so);
  - "not those / different ones / something else / others" asks again with the same filters (the
    shown items are left out anyway); "only ones I haven't seen" leaves out every item of the
    conversation, liked or shown.
- **The last user message** decides the turn: a recommendation (the rules or the encoder found
  something to act on), a question about a named title (answered from its catalog row), "why
  those?" (the evidence behind the last list), a greeting or thanks, or off-topic chat (a short
  polite redirect). Every answer is text built from the catalog and the interaction data; no turn
  is left to free generation.

The state goes back in the response's `chatrec.state`, the filters in `chatrec.filters`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatrec.chat import SMALL_TALK, CatalogIndex, Understanding, display_title, shown, understand
from chatrec.picks import CoOccurrence, Evidence, Picker
from chatrec.prompts import plural
from chatrec.understanding import TextSpace

DIFFERENT = re.compile(r"\b(?:not (?:those|these|them|that|any of (?:those|these|them))|different(?: ones?)?|"
                       r"other (?:ones|options|picks|suggestions|titles)|something else|anything else|new ones|"
                       r"more options|others|fresh ones)\b", re.I)
OLDER = re.compile(r"\b(?:older|earlier|less recent|more classic)\b", re.I)
NEWER = re.compile(r"\b(?:newer|more recent|more modern|later ones)\b", re.I)
UNSEEN = re.compile(r"\b(?:haven't|have not|never|not yet|hasn't)\s+(?:already\s+)?(?:seen|watched|read|tried|bought|"
                    r"heard)\b|\bunseen\b|\bnew to me\b", re.I)
ORDINAL = re.compile(r"\b(?:the\s+(?P<word>first|second|third|fourth|fifth|last|1st|2nd|3rd|4th|5th)"
                     r"(?:\s+(?:one|pick|title|suggestion|option|item)s?)?(?!\s+(?:time|thing|day))|#\s?(?P<hash>\d)|"
                     r"number\s+(?P<num>\d))\b", re.I)
ORDINAL_WORDS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
                 "fifth": 5, "5th": 5}
NEG_BEFORE = re.compile(r"(?:not|didn't|did not|don't|hated?|disliked?|no)\b[^.!?]*$", re.I)
SEEN_BEFORE = re.compile(r"(?:seen|watched|saw|read)\b[^.!?]*$", re.I)
YEARS = re.compile(r"\b(?:(?:19|20)?\d0'?s|(?:1[89]|20)\d\d|twenties|thirties|forties|fifties|sixties|seventies|"
                   r"eighties|nineties)\b", re.I)
LIKE_IT = re.compile(r"\b(?:more like|similar to|something like)\s+(?:it|that|this)(?:\s+one)?\b", re.I)
NOT_YEARS = re.compile(r"\b(?:not|no|nothing|none|without)\b[^.,;!?]*\b(?:before|after|since)\s+(?:1[89]|20)\d\d",
                       re.I)
WHY = re.compile(r"^\s*(?:why|how come|how did you (?:choose|pick)|what makes you)\b", re.I)
LISTED = re.compile(r"^\s*(\d{1,2})\.\s+(.+)$")
Retrieve = Callable[[list[tuple[str, str]], int, str | None, list[str] | None], list[str]]


def model_retrieve(rec: Any) -> Retrieve:
    """`rec`'s constrained retrieval as a `Retrieve` (item ids, best first; none when no item passes)."""
    from chatrec.constrained import FilterError

    def retrieve(history: list[tuple[str, str]], k: int, request: str | None, include: list[str] | None) -> list[str]:
        try:
            return [r.item_id for r in rec.recommend(history, k=k, request=request, include_item_ids=include)]
        except FilterError:
            return []

    return retrieve


@dataclass
class DialogueState:
    """What the conversation has established so far (catalog positions)."""

    liked: list[int] = field(default_factory=list)
    disliked: list[int] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)
    shown: list[list[int]] = field(default_factory=list)      # one list per answer, in order
    categories: list[str] = field(default_factory=list)       # named: a hard filter
    implied: list[str] = field(default_factory=list)          # from the words: ranked first
    avoid: list[str] = field(default_factory=list)            # never shown
    years: tuple[int, int] | None = None
    years_loose: tuple[int, int] | None = None                # "older"/"newer" when no item passes the strict years
    unseen_only: bool = False
    mentioned: int | None = None                              # the last item asked about
    events: list[tuple[str, str]] = field(default_factory=list)  # the client's history (item id, action)
    words: np.ndarray | None = None                           # [d] the last request's vector
    request: str = ""

    def all_shown(self) -> list[int]:
        return list(dict.fromkeys(i for turn in self.shown for i in turn))

    def to_json(self, index: CatalogIndex) -> dict[str, Any]:
        def ref(ids: Sequence[int]) -> list[dict[str, str]]:
            return [{"item_id": index.ids[i], "title": index.titles[i]} for i in dict.fromkeys(ids)]

        return {"liked": ref(self.liked), "disliked": ref(self.disliked), "excluded": ref(self.excluded),
                "shown": [index.ids[i] for i in self.all_shown()], "categories": list(self.categories),
                "implied_categories": list(self.implied), "avoid_categories": list(self.avoid),
                "years": list(self.years) if self.years else None, "unseen_only": self.unseen_only}


@dataclass
class Turn:
    """One answer: its text, the items (catalog positions, scores) and the `chatrec` extras."""

    kind: str
    text: str
    items: list[tuple[int, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    request: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)


def join(words: Sequence[str], last: str = "and") -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" {last} " + words[-1]


def years_phrase(years: tuple[int, int] | None) -> str:
    if not years:
        return ""
    lo, hi = years
    if hi - lo == 9 and lo % 10 == 0:
        return f" from the {lo}s"
    if lo == hi:
        return f" from {lo}"
    if lo <= 0:
        return f" from before {hi + 1}"
    return f" from {lo} on" if hi >= 9999 else f" from {lo} to {hi}"


class Conversation:
    """Answers chat turns over one catalog (see the module docstring for the rules)."""

    def __init__(self, index: CatalogIndex, space: TextSpace | None, picker: Picker, domain: str,
                 catalog_text: Sequence[str] = ()):
        self.index, self.space, self.picker, self.domain = index, space, picker, domain
        index.common_words = space is None  # the movie word list (chatrec.chat.GENRE_WORDS) is only a fallback
        self.many = plural(domain)
        self.by_shown = {shown(t): i for i, t in enumerate(index.titles)}
        self.by_shown.update({t: i for i, t in enumerate(index.titles)})
        self.text = list(catalog_text)
        self._understood: dict[str, Understanding] = {}
        self.years = np.array([y if y is not None else -1 for y in index.years], np.int64)
        self.pop_rank = np.empty(len(index.ids), np.int64)
        self.pop_rank[np.argsort(-picker.co.count, kind="stable")] = np.arange(1, len(index.ids) + 1)

    @classmethod
    def for_recommender(cls, rec: Any, *, text_encoder: bool = True, interactions: Any = None) -> Conversation:
        """The catalog, interactions and text encoder of `rec`'s bundle (loaded once per server);
        `interactions` (a frame with user_id, item_id, action) replaces the bundle's log (eval: the
        training split only)."""
        import logging

        import pandas as pd

        from chatrec.embeddings import EmbeddingConfig

        pos, neg = rec.positive_actions[0], rec.negative_actions[0]
        index = CatalogIndex(rec.catalog, positive_action=pos, negative_action=neg)
        path = rec.bundle.interactions_path
        inter = interactions
        if inter is None and path.exists():
            inter = pd.read_parquet(path, columns=["user_id", "item_id", "action"])
        co = CoOccurrence(index.position, inter, rec.negative_actions)
        space = None
        if text_encoder:
            embedding = EmbeddingConfig()
            fitted = (rec.bundle.stage("sids") or {}).get("config") or {}
            emb = fitted.get("embedding") if isinstance(fitted, dict) else None
            if isinstance(emb, dict) and emb.get("model"):
                embedding = EmbeddingConfig(model=str(emb["model"]), max_seq_length=emb.get("max_seq_length"))
            try:
                space = TextSpace.for_catalog(rec.catalog, rec.bundle.domain, embedding)
            except Exception as exc:  # no encoder installed or loadable: the rules alone still work
                logging.getLogger("chatrec.serve").warning("chat reads words by rules only: %s", exc)
        text = rec.catalog["text"].astype(str).tolist() if "text" in rec.catalog.columns else []
        return cls(index, space, Picker(index.categories, co), rec.bundle.domain, text)

    def forget(self) -> None:
        """Drop the cached readings of messages (to time a cold read)."""
        self._understood.clear()
        if self.space is not None:
            self.space.forget()

    # state -------------------------------------------------------------------------------------
    def listed(self, text: str) -> list[int]:
        """Catalog positions of the numbered items of an assistant answer."""
        out = []
        for line in text.splitlines():
            m = LISTED.match(line)
            if m:  # the title ends at a ": " before the facts, and may hold one ("Mission: Impossible")
                rest = m.group(2)
                ends = [len(rest), *(c.start() for c in re.finditer(r":\s", rest))]
                i = next((self.by_shown[t] for e in sorted(ends, reverse=True)
                          if (t := rest[:e].strip()) in self.by_shown), None)
                if i is not None:
                    out.append(i)
        return out

    def read_user(self, state: DialogueState, text: str) -> tuple[Understanding, dict[str, Any]]:
        """Update `state` with one user message; returns the rules' reading and what else was found."""
        index = self.index
        u = self._understood.get(text)
        if u is None:  # earlier messages come back with every turn of a conversation
            u = understand(text, index)
            if len(self._understood) >= 4096:
                self._understood.pop(next(iter(self._understood)))
            self._understood[text] = u
        found: dict[str, Any] = {"follow_up": [], "negated": []}
        last = state.shown[-1] if state.shown else []
        for x in u.linked:
            i = index.position[x.item_id]
            if x.action == index.positive_action:
                state.liked.append(i)
            elif x.action == index.negative_action:
                state.disliked.append(i)
            elif x.action == "exclude":
                state.excluded.append(i)
        mentions = [index.position[x.item_id] for x in u.linked if x.action == "mention"]
        if LIKE_IT.search(text):
            target = state.mentioned if state.mentioned is not None else (last[0] if last else None)
            if target is not None:
                state.liked.append(target)
                found["follow_up"].append("more like it")
        if mentions:
            state.mentioned = mentions[-1]
        for m in ORDINAL.finditer(text):
            word = (m.group("word") or "").lower()
            n = len(last) if word == "last" else ORDINAL_WORDS.get(word) or int(m.group("hash") or m.group("num"))
            if not last or not 1 <= n <= len(last):
                continue
            before = text[max(0, m.start() - 40): m.start()]
            bucket = state.disliked if NEG_BEFORE.search(before) else (
                state.excluded if SEEN_BEFORE.search(before) else state.liked)
            bucket.append(last[n - 1])
            found["follow_up"].append(f"the {word or f'#{n}'} one")
        reading = None
        if self.space is not None:
            skip = [x.phrase for x in u.linked] + [m.group(0) for rx in (DIFFERENT, OLDER, NEWER, UNSEEN, ORDINAL, YEARS,
                                                                         LIKE_IT)
                                                   for m in rx.finditer(text)]
            reading = self.space.read(text, skip=sorted(skip, key=len, reverse=True))
            found["intent"], found["intent_score"] = reading.intent, reading.intent_score
            found["negated"] = reading.negated
        # categories: named ones (hard), under a negation (avoided), or implied by the words (soft)
        negated_named = [c for phrase in (reading.negated if reading else []) for c in index.find_categories(phrase)]
        negated_named += [c for c in u.categories if re.search(rf"\b(?:not|no|without)\s+(?:a |an |any )?"
                                                               rf"{re.escape(c)}", text, re.I)]
        avoid = list(dict.fromkeys([*negated_named, *(c for c, _ in (reading.avoid if reading else []))]))
        named = [c for c in u.categories if c not in avoid]
        implied = [c for c, _ in reading.categories] if reading is not None and not named else []
        if not named:  # a misspelled category name ("comdy"): the words around it read no better
            implied = index.misspelled_categories(text) or implied
        implied = [c for c in implied if c not in avoid]
        if avoid:
            state.avoid = list(dict.fromkeys([*state.avoid, *avoid]))
            state.categories = [c for c in state.categories if c not in avoid]
            state.implied = [c for c in state.implied if c not in avoid]
        if named or implied:
            state.categories, state.implied = named, implied
            state.avoid = [c for c in state.avoid if c not in named and c not in implied]
        if u.years:
            state.years, state.years_loose = u.years, None
            lo, hi = u.years
            if NOT_YEARS.search(text) and (lo <= 0 or hi >= 9999):  # "nothing from before 2000": the other side
                state.years = (hi + 1, 9999) if lo <= 0 else (0, lo - 1)
        shown_years = [int(self.years[i]) for i in last if self.years[i] > 0]
        if OLDER.search(text) and shown_years and not u.years:  # before the oldest shown, else before the newest
            state.years, state.years_loose = (0, min(shown_years) - 1), (0, max(shown_years) - 1)
            found["follow_up"].append("older")
        elif NEWER.search(text) and shown_years and not u.years:  # after the newest shown, else after the oldest
            state.years, state.years_loose = (max(shown_years) + 1, 9999), (min(shown_years) + 1, 9999)
            found["follow_up"].append("newer")
        if DIFFERENT.search(text) and last:
            found["follow_up"].append("different")
        if UNSEEN.search(text):
            state.unseen_only = True
            found["follow_up"].append("unseen")
        if reading is not None and reading.vector is not None and (named or implied or u.recommend):
            state.words, state.request = reading.vector, text
        found.update(avoid=avoid, named=named, implied=implied)
        return u, found

    def rebuild(self, messages: Sequence[tuple[str, str]]) -> tuple[DialogueState, Understanding, dict[str, Any]]:
        """The state after every message, and the reading of the last user message."""
        state = DialogueState()
        users = [i for i, (role, _) in enumerate(messages) if role == "user"]
        last_user = users[-1] if users else -1
        u, found = understand("", self.index), dict[str, Any]()
        for n, (role, text) in enumerate(messages[-24:] if len(messages) > 24 else messages):
            n += max(0, len(messages) - 24)
            if role == "assistant":
                items = self.listed(text)
                if items:
                    state.shown.append(items)
            elif role == "user":
                before_words = state.words
                u, found = self.read_user(state, text)
                if n != last_user and state.words is None:
                    state.words = before_words
        return state, u, found

    # the turn ----------------------------------------------------------------------------------
    def request_items(self, request: str, retrieve: Retrieve, *, k: int, history: Sequence[tuple[str, str]] = (),
                      categories: Sequence[str] | None = None, exclude_item_ids: Sequence[str] = (),
                      exclude_history: bool = True) -> list[tuple[int, float]] | None:
        """The items (catalog positions, pick scores) that a history + one request in words gets: the
        picks of a chat turn with that message (`/v1/recommendations` with `request`, and the eval's
        LLM row with a request). None when the words ask for no recommendation (small talk, a
        question about a title) or no item qualifies: the caller then asks the model alone.

        Why not the model alone: its chat prompt holds only the last `history_len` events, and on
        ML-100k reading the request that way hit a third as often as the plain history prompt
        (conversational HR@10 0.065 against 0.158 without words); the picks read the words, keep
        the whole history's retrieval as one signal, and the chat turn reached 0.34."""
        turn = self.answer([("user", request)], retrieve, k=k, categories=categories,
                           exclude_item_ids=exclude_item_ids, history=history, exclude_history=exclude_history)
        return turn.items if turn.kind == "recommendation" and turn.items else None

    def answer(self, messages: Sequence[tuple[str, str]], retrieve: Retrieve, *, k: int | None = None,
               categories: Sequence[str] | None = None, exclude_item_ids: Sequence[str] = (),
               history: Sequence[tuple[str, str]] = (), exclude_history: bool = True) -> Turn:
        """Answer the last user message of `messages` ((role, text) pairs). `categories`,
        `exclude_item_ids` and `history` are the client's own options (hard, as given)."""
        index = self.index
        state, u, found = self.rebuild(messages)
        text = next((t for r, t in reversed(messages) if r == "user"), "")
        notes = [f'No catalog match for "{p}".' for p in u.unmatched]
        extra: dict[str, Any] = {"linked": [x.to_json() for x in u.linked], "unmatched": u.unmatched,
                                 "understood": {"categories": found.get("named", []) + found.get("implied", []),
                                                "avoid": found.get("avoid", []), "negated": found.get("negated", []),
                                                "follow_up": found.get("follow_up", []),
                                                "intent": found.get("intent")}}
        known = [(item_id, action) for item_id, action in history if item_id in index.position]
        for item_id, action in reversed(known):
            (state.disliked if action == index.negative_action else state.liked).insert(0, index.position[item_id])
        state.events = known
        extra["state"] = state.to_json(index)
        if SMALL_TALK.match(text):
            thanks = re.match(r"\s*(thank|thx|cheers)", text, re.I)
            extra["turn"] = "small_talk"
            return Turn("small_talk", ("You're welcome! " if thanks else "Hi! ") + self._invite(), extra=extra)
        if WHY.match(text) or (found.get("intent") == "why" and not u.recommend and not found.get("implied")
                               and not found.get("follow_up") and not u.linked):
            return self._why(state, notes, extra)
        mentions = [x for x in u.linked if x.action == "mention"]
        acts = bool(found.get("follow_up") or found.get("named") or found.get("avoid") or u.years)
        if mentions and not u.recommend and not acts:
            extra["turn"] = "about"
            return Turn("about", "\n".join([*notes, *(self.about(index.position[x.item_id]) for x in mentions)]),
                        extra=extra)
        off_topic = found.get("intent") == "off_topic"
        if u.unmatched and not u.recommend and not acts and not (
                off_topic and not any(index._is_title_like(p) for p in u.unmatched)):
            extra["turn"] = "about"
            return Turn("about", " ".join(notes) + f" Name another {self.domain}, or ask me for recommendations.",
                        extra=extra)
        wants = u.recommend or acts or bool([x for x in u.linked if x.action != "mention"])
        if not wants and off_topic and (not found.get("implied")
                                                                 or found.get("intent_score", 0.0) >= 0.6):
            extra.update(turn="off_topic", unmatched=[])
            return Turn("off_topic", f"I can only help with {self.many} from this catalog. " + self._invite(),
                        extra=extra)
        return self._recommend(state, u, text, notes, extra, retrieve, k=k, categories=categories,
                               exclude_item_ids=exclude_item_ids, exclude_history=exclude_history)

    def _invite(self) -> str:
        return f"Tell me a {self.domain} you loved, or what you are in the mood for, and I will suggest a few."

    def _recommend(self, state: DialogueState, u: Understanding, text: str, notes: list[str], extra: dict[str, Any],
                   retrieve: Retrieve, *, k: int | None, categories: Sequence[str] | None,
                   exclude_item_ids: Sequence[str], exclude_history: bool) -> Turn:
        index = self.index
        k = k or u.k or 3
        n = len(index.ids)
        named = list(categories) if categories is not None else list(state.categories)
        excluded = {index.position[i] for i in exclude_item_ids if i in index.position} | set(state.excluded)
        excluded |= set(state.all_shown())
        if exclude_history or state.unseen_only:
            excluded |= set(state.liked) | set(state.disliked)
        base = np.ones(n, bool)
        base[list(excluded)] = False
        relaxed: list[str] = []
        years = state.years
        avoid = [c for c in state.avoid if c not in named]
        while True:
            mask = base.copy()
            if named:
                mask &= self.picker.carrying(named)
            if avoid:
                mask &= ~self.picker.carrying(avoid)
            if years:
                mask &= (self.years >= years[0]) & (self.years <= years[1])
            if mask.any():
                break
            if years and state.years_loose and years != state.years_loose:
                years = state.years_loose
                notes = [*notes, f"Nothing that fits is {'older' if years[0] <= 0 else 'newer'} than the whole "
                                 f"last list, so these are{years_phrase(years)}."]
            elif years:
                years, relaxed = None, [*relaxed, "the years"]
            elif avoid:
                avoid, relaxed = [], [*relaxed, "the categories to avoid"]
            elif named and categories is None:
                named, relaxed = [], [*relaxed, "the categories"]
            else:
                return Turn("recommendation", f"No {self.domain} in the catalog passes these filters.",
                            extra={**extra, "filters": {"k": k}})
        pos_action, neg_action = index.positive_action, index.negative_action
        given = {item_id for item_id, _ in state.events}  # the client's events as given, then the conversation's
        history = list(state.events) + [(index.ids[i], pos_action) for i in dict.fromkeys(state.liked)
                                         if index.ids[i] not in given]
        history += [(index.ids[i], neg_action) for i in dict.fromkeys(state.disliked) if index.ids[i] not in given]
        request = None if history else text
        include = None if mask.all() else [index.ids[i] for i in np.flatnonzero(mask)]
        model_ids = retrieve(history, self.picker.config.model_k, request, include)
        model_ranked = [index.position[i] for i in model_ids if i in index.position]
        words = self.space.item_similarity(state.words) if self.space is not None and state.words is not None else None
        implied = [c for c in state.implied if c not in avoid] if not named else []
        picks = self.picker.pick(k, mask, words=words, categories=named or implied, liked=state.liked,
                                 disliked=state.disliked, model_ranked=model_ranked)
        filters: dict[str, Any] = {"k": k}
        if named:
            filters["categories"] = named
        if implied:
            filters["implied_categories"] = implied
        if avoid:
            filters["avoid_categories"] = avoid
        if years:
            filters["years"] = list(years)
        if excluded:
            filters["exclude_item_ids"] = [index.ids[i] for i in sorted(excluded)]
        lines = list(notes)
        liked = [x for x in u.linked if x.action == pos_action]
        disliked = [x for x in u.linked if x.action == neg_action]
        if liked or disliked:
            said = []
            if liked:
                said.append("you liked " + join([display_title(x.title)[0] for x in liked]))
            if disliked:
                said.append("you disliked " + join([display_title(x.title)[0] for x in disliked]))
            lines.append("Noted: " + " and ".join(said) + ".")
        if relaxed:
            lines.append(f"Nothing in the catalog passes every filter, so I left out {join(relaxed)}.")
        what = (join(named or implied, "or") + " " if named or implied else "") + (self.many if len(picks) != 1
                                                                                  else self.domain)
        also = []
        if avoid:
            also.append("no " + join(avoid, "or"))
        if state.all_shown():
            also.append("none you have seen here already")
        tail = f" ({'; '.join(also)})" if also else ""
        lines.append(f"Here {'is' if len(picks) == 1 else 'are'} {len(picks)} {what}{years_phrase(years)}"
                     f"{tail} for you:")
        for m, (i, _, ev) in enumerate(picks, 1):
            why = self.evidence_text(i, ev)
            lines.append(f"{m}. {shown(index.titles[i])}" + (f": {why}" if why else ""))
        extra.update(turn="recommendation", filters=filters)
        return Turn("recommendation", "\n".join(lines), [(i, s) for i, s, _ in picks], extra, request, history)

    # words about items -------------------------------------------------------------------------
    def evidence_text(self, i: int, ev: Evidence) -> str:
        """Facts about one pick: its categories (the asked ones first), the liked title it goes with."""
        cats = [c for c in self.index.categories[i] if c.lower() != "unknown"]
        first = [c for c in cats if c in ev.shared_categories]
        parts = []
        if cats:
            parts.append(", ".join((first + [c for c in cats if c not in first])[:3]))
        if ev.closest_liked is not None and ev.co_users > 0:
            liked = display_title(self.index.titles[ev.closest_liked])[0]
            people = "person" if ev.co_users == 1 else "people"
            parts.append(f"{ev.co_users} {people} who had {liked} also had it")
        return "; ".join(parts) + ("." if parts else "")

    def about(self, i: int) -> str:
        """A few facts about one catalog item, from its row."""
        index = self.index
        name, _ = display_title(index.titles[i])
        cats = [c for c in index.categories[i] if c.lower() != "unknown"]
        line = f"{shown(index.titles[i])}: " + (f"{', '.join(cats)}." if cats else f"a {self.domain} in the catalog.")
        text = self.text[i] if i < len(self.text) else ""
        if text and not text.startswith(index.titles[i]) and not text.startswith(name):
            line += " " + text[:400]
        count = int(self.picker.co.count[i])
        if count:
            line += f" {count} people in the data had it (number {int(self.pop_rank[i])} of {len(index.ids)})."
        return line + f" Ask for more {self.many} like it, and I will find some."

    def _why(self, state: DialogueState, notes: list[str], extra: dict[str, Any]) -> Turn:
        extra["turn"] = "why"
        if not state.shown:
            return Turn("why", "I have not suggested anything yet. " + self._invite(), extra=extra)
        index = self.index
        wanted = state.categories or state.implied
        reasons = []
        if wanted:
            reasons.append("what you asked for (" + join(wanted, "or") + ")")
        if state.liked:
            reasons.append("what you liked (" + join([display_title(index.titles[i])[0]
                                                      for i in dict.fromkeys(state.liked)][:3]) + ")")
        if state.years:
            reasons.append("the years" + years_phrase(state.years))
        lines = [*notes, "I picked them from " + (join(reasons) if reasons else "how popular they are with people in "
                                                   "the data") + ", and how often people had them together:"]
        for m, i in enumerate(state.shown[-1], 1):
            best, co_best, cos_best = None, 0, 0.0
            for j in list(dict.fromkeys(state.liked))[-10:]:  # the liked title the pick was closest to, as the list said
                cos, co = self.picker.co.cosine(j, self.picker.config.shrink)
                if cos[i] > cos_best:
                    best, co_best, cos_best = j, int(co[i]), float(cos[i])
            ev = Evidence(tuple(c for c in index.categories[i] if c in wanted), best, co_best)
            facts = self.evidence_text(i, ev).rstrip(".")
            count = int(self.picker.co.count[i])
            if count:
                facts += f"; {count} people in the data had it"
            lines.append(f"{m}. {shown(index.titles[i])}: {facts}.")
        return Turn("why", "\n".join(lines), extra=extra)
