"""What a chat turn asks for: recommendation or not, how many, which filters, which titles.

`understand(text, index)` reads a person's message with plain rules (stated below) over the
bundle's own catalog: its category names, its years and its titles. The server uses the result to
retrieve with the model's constrained beam search under those filters, with the linked titles as
history, and returns what it understood (`chatrec.filters`, `chatrec.linked`) so a client can show
it. Rules, because they are checkable and exact where the catalog has the metadata; the model's
retrieval still ranks the items (the words also go into its prompt).

Rules:
- **Recommendation turn**: the message asks for something (recommend, suggest, "something",
  "any good", "what should I ...", "looking for", "more like", "give me" ...), or names a category
  or a decade without being a question about a named item. Thanks, greetings and questions about a
  linked title ("what is X about?") are other turns.
- **K**: a number word or digit right before the domain word or "picks/ideas/options" ("three
  sci-fi movies", "5 ideas"), 1..10; else the request's `k`, else 3.
- **Categories**: a catalog category named in the text (case-insensitive, by word stem, so
  "westerns" finds Western and "telescopes" finds Telescope), plus common words for movie genres
  ("funny" Comedy, "scary" Horror, "cartoon" Animation, "kids" Children's ...).
- **Years**: "1990s", "90s", "nineties" -> 1990-1999; "from 1995" / "in 1995" -> 1995;
  "before 1980" -> up to 1979; "after 2000" / "since 2000" -> from 2001 / 2000.
- **Titles**: quoted text, or the words after "loved/liked/enjoyed/adored/like/similar to/such as"
  (liked), "hated/disliked/didn't like/couldn't stand" (disliked), "not/except/other than/no more"
  (excluded), "called/titled/named" (asked about), cut at punctuation and at "and"/"or"/"but" when the
  whole phrase does not match. A phrase links to the catalog title with the best fuzzy score
  (rapidfuzz, on titles with a leading article restored and the year split off; a year in the
  phrase must match the item's year); below the threshold nothing links. A phrase that is quoted,
  follows "called/titled/named", or is capitalised and is no category word, is reported back as
  unmatched ("no catalog match for ...").
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

NUMBER_WORDS = {"one": 1, "a couple of": 2, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10}
ASK = re.compile(
    r"\b(recommend\w*|suggest\w*|something|anything|any good|what should i|what (?:can|could) i|what to "
    r"(?:watch|see|read|buy|try|get)|looking for|in the mood|give me|show me|find me|pick(?:s)? for me|ideas?|"
    r"options|more like|similar|another|what else|i want|i need|i'd like|i would like|could you find|please)\b", re.I)
SMALL_TALK = re.compile(r"^\s*(thanks?|thank you|thx|cheers|hi|hello|hey|bye|goodbye|ok(?:ay)?|cool|great)\b[\s!.]*$",
                        re.I)
QUESTION_ABOUT = re.compile(r"\b(what is|what's|who (?:is|directed|made)|when (?:was|did)|tell me about|is it|"
                            r"how long|what year)\b", re.I)
# common English words for the MovieLens genres (other catalogs match their own category names)
GENRE_WORDS = {
    "funny": "Comedy", "comedies": "Comedy", "comic": "Comedy", "laugh": "Comedy", "hilarious": "Comedy",
    "scary": "Horror", "frightening": "Horror", "creepy": "Horror", "spooky": "Horror", "slasher": "Horror",
    "romantic": "Romance", "love story": "Romance", "cartoon": "Animation", "cartoons": "Animation",
    "animated": "Animation", "kids": "Children's", "children": "Children's", "family": "Children's",
    "science fiction": "Sci-Fi", "scifi": "Sci-Fi", "sci fi": "Sci-Fi", "space": "Sci-Fi",
    "cowboy": "Western", "cowboys": "Western", "noir": "Film-Noir", "detective": "Mystery",
    "whodunit": "Mystery", "suspense": "Thriller", "suspenseful": "Thriller", "gangster": "Crime",
    "heist": "Crime", "battle": "War", "soldiers": "War", "magic": "Fantasy", "songs": "Musical",
    "dramatic": "Drama", "documentaries": "Documentary", "true story": "Documentary",
    "action-packed": "Action",
}
_GENRE_WORD = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(GENRE_WORDS, key=len, reverse=True)) + r")\b")
POSITIVE = r"(?:loved|love|liked|enjoyed|adored|like|similar to|such as|fan of|big fan of|more like)"
NEGATIVE = r"(?:hated|hate|disliked|didn't like|did not like|couldn't stand|could not stand)"
EXCLUDE = r"(?:not|except|other than|no more|besides|apart from|already seen|already watched|seen|watched)"
NAMED = r"(?:called|titled|named|what is|what's|tell me about|who directed|who made|when was|have you seen)"
# the phrase runs to the sentence's end: a list of titles after one trigger ("loved Heat, Fargo and Alien");
# a period inside a word ("G.I. Jane", "L.A."), after an initial ("E.T.") or an abbreviation ("Mr.", "vs.")
# does not end the sentence
_ABBREVIATION = "(?:" + "|".join(rf"(?<=\b{a})" for a in (  # one look-behind each: Python's must be fixed-width
    "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "vs", "Vs", "Sgt", "Lt", "Col", "Gen", "Capt", "Prof", "Mt", "No", "Vol",
    "Pt")) + ")"
_PHRASE = rf"(?:[^.;!?\n]|\.(?=[^\s.])|(?<=\b[A-Z])\.|{_ABBREVIATION}\.)+"
MENTION = re.compile(rf"\b(?P<kind>{NEGATIVE}|{POSITIVE}|{EXCLUDE}|{NAMED})\s+(?P<phrase>{_PHRASE})", re.I)
_NEXT_TRIGGER = re.compile(rf"\s*\b(?:but|and|or)?\s*\b(?P<kind>{NEGATIVE}|{EXCLUDE}|{POSITIVE})\b", re.I)
_SENTENCE_START = re.compile(r"(?:^|[.!?;:,(\n]\s*)$")


def _in_title(text: str, start: int, word: str) -> bool:
    """A capitalised trigger inside a sentence is part of a title ("Some Like It Hot", "Everyone Says I
    Love You"), not a verb; at a sentence's start ("Loved Heat.") it is the verb."""
    return word[:1].isupper() and not _SENTENCE_START.search(text[:start])
_TRAILING = re.compile(r"\s+(?:about|made|released|out)\s*$", re.I)
QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{2,120})[\"“”«»]|(?<!\w)'([^']{2,120})'(?!\w)")
DETERMINERS = re.compile(r"^(?:a|an|some|any|more|another|other|the movie|the film|movies|films|one)\s+", re.I)


def _undetermined(text: str) -> str:
    """`text` without a leading determiner ("some comedies"), unless capitalised: inside a sentence
    that starts a title ("Some Like It Hot", "One Fine Day", "A Clockwork Orange")."""
    return text if text[:1].isupper() else DETERMINERS.sub("", text)
_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<art>The|A|An|Les|La|Le|Il|Das|Der|Die|El)$")
LARGE_CATALOG = 20_000  # titles; above it a title lookup also needs a shared word (CatalogIndex._candidates)
_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class Linked:
    """A title phrase of the message linked to a catalog item."""

    phrase: str
    item_id: str
    title: str
    action: str            # the action the words imply (a positive action, a negative one, or "exclude"/"mention")
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"phrase": self.phrase, "item_id": self.item_id, "title": self.title, "action": self.action,
                "score": round(self.score, 1)}


@dataclass
class Understanding:
    """What one user message asks for."""

    recommend: bool
    k: int | None = None
    categories: list[str] = field(default_factory=list)
    years: tuple[int, int] | None = None
    linked: list[Linked] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def filters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.categories:
            out["categories"] = list(self.categories)
        if self.years:
            out["years"] = list(self.years)
        excluded = [x.item_id for x in self.linked if x.action == "exclude"]
        if excluded:
            out["exclude_item_ids"] = excluded
        return out


def _stem(word: str) -> str:
    w = word.lower().replace("’", "'")
    for suffix in ("'s", "ies", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return w


def display_title(title: str) -> tuple[str, int | None]:
    """`"Usual Suspects, The (1995)"` -> (`"The Usual Suspects"`, 1995)."""
    year = None
    m = _YEAR.search(title)
    if m:
        year, title = int(m.group(1)), title[: m.start()].strip()
    a = _ARTICLE.match(title)
    if a:
        title = f"{a.group('art')} {a.group('rest')}"
    return title, year


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


class _Window(Mapping[int, str]):
    """Catalog positions -> names of a slice of the titles sorted by length (no copy into a dict)."""

    def __init__(self, positions: list[int], names: list[str]):
        self.positions, self.names = positions, names

    def __getitem__(self, key: int) -> str:
        raise KeyError(key)  # rapidfuzz iterates items(); lookups by key are not needed

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)

    def items(self) -> Any:
        return zip(self.positions, self.names, strict=True)


class CatalogIndex:
    """Titles, categories and years of one catalog, for `understand`."""

    def __init__(self, catalog: pd.DataFrame, *, positive_action: str = "like", negative_action: str = "dislike",
                 threshold: float = 86.0):
        self.ids = catalog["item_id"].astype(str).tolist()
        self.position = {item_id: i for i, item_id in enumerate(self.ids)}
        self.titles = catalog["title"].astype(str).tolist()
        shown = [display_title(t) for t in self.titles]
        self.names = [_norm(name) for name, _ in shown]
        years = catalog["year"] if "year" in catalog.columns else pd.Series([None] * len(catalog))
        self.years = [int(y) if pd.notna(y) else (yr if yr is not None else None)
                      for y, (_, yr) in zip(years, shown, strict=True)]
        cats = catalog["categories"] if "categories" in catalog.columns else pd.Series([[]] * len(catalog))
        self.categories = [tuple(str(c) for c in (row if row is not None else ())) for row in cats]
        names = sorted({c for row in self.categories for c in row if c and c.lower() != "unknown"})
        self.category_names = names
        self._by_stem = {_stem(w): c for c in names for w in [c, c.replace("-", " "), c.replace("-", "")]}
        self._by_stem.update({_stem(c.split()[-1]): c for c in names if " " in c})
        self._by_lower = {c.lower(): c for c in names}
        self._names_re = re.compile(r"\b(?:" + "|".join(re.escape(c) for c in sorted(self._by_lower, key=len, reverse=True))
                                    + r")\b") if names else None
        self.positive_action, self.negative_action = positive_action, negative_action
        self.threshold = threshold
        order = sorted(range(len(self.names)), key=lambda i: len(self.names[i]))  # title lookups by length
        self._by_length = order
        self._names_by_length = [self.names[i] for i in order]
        self._lengths = [len(self.names[i]) for i in order]
        self._by_year: dict[int, list[int]] = {}
        for i, y in enumerate(self.years):
            if y is not None:
                self._by_year.setdefault(y, []).append(i)
        self._postings: dict[str, set[int]] = {}
        if len(self.names) > LARGE_CATALOG:
            for i, name in enumerate(self.names):
                for w in set(name.split()):
                    self._postings.setdefault(w, set()).add(i)
        # English words for the MovieLens genres: a fallback for servers without the text encoder
        self.common_words = True

    # categories and years --------------------------------------------------------------------
    def find_categories(self, text: str) -> list[str]:
        found: list[str] = []
        low = text.lower()
        if self.common_words:
            found += [GENRE_WORDS[m.group(0)] for m in _GENRE_WORD.finditer(low)
                      if GENRE_WORDS[m.group(0)] in self.category_names]
        if self._names_re is not None:  # multi-word and hyphenated names as written
            found += [self._by_lower[m.group(0)] for m in self._names_re.finditer(low)]
        for word in re.findall(r"[\w'’-]+", low):
            hit = self._by_stem.get(_stem(word))
            if hit:
                found.append(hit)
        return list(dict.fromkeys(found))

    def misspelled_categories(self, text: str, cutoff: float = 85.0) -> list[str]:
        """Categories whose name (or a word of it) a word of `text` nearly spells ("comdy", "thriler"):
        words of 5+ letters, rapidfuzz ratio >= `cutoff` against the catalog's own category stems."""
        from rapidfuzz import fuzz, process

        stems = list(self._by_stem)
        found = []
        for word in re.findall(r"[a-z][a-z'’-]{4,}", text.lower()):
            best = process.extractOne(_stem(word), stems, scorer=fuzz.ratio, score_cutoff=cutoff)
            if best is not None:
                found.append(self._by_stem[best[0]])
        return list(dict.fromkeys(found))

    def item_ids_in_years(self, years: tuple[int, int]) -> list[str]:
        lo, hi = years
        return [i for i, y in zip(self.ids, self.years, strict=True) if y is not None and lo <= y <= hi]

    # titles ----------------------------------------------------------------------------------
    def link(self, phrase: str) -> tuple[int, float] | None:
        """Best catalog title for `phrase` (index, score), or None below the threshold."""
        from rapidfuzz import fuzz, process

        m = re.search(r"\(?\b(1[89]\d\d|20\d\d)\)?\s*$", phrase.strip())
        year = int(m.group(1)) if m else None
        query = _norm(phrase[: m.start()] if m else phrase)
        if len(query) < 2:
            return None
        choices: Mapping[int, str] | list[str] = self.names
        if year is not None:
            choices = {i: self.names[i] for i in self._by_year.get(year, ())}
        else:
            choices = self._candidates(query)
        best = process.extractOne(query, choices, scorer=fuzz.ratio, score_cutoff=self.threshold)
        if best is None:
            return None
        _, score, idx = best
        return int(idx), float(score)

    def _candidates(self, query: str) -> Mapping[int, str]:
        """Titles that can reach the threshold: a ratio of `t` needs lengths within a factor
        t / (2 - t) of each other (exact); in catalogs of more than `LARGE_CATALOG` titles, also one
        of the query's two rarest words (a typo in every word of a title then finds nothing)."""
        t = self.threshold / 100
        lo, hi = len(query) * t / (2 - t), len(query) * (2 - t) / t
        start, end = bisect.bisect_left(self._lengths, lo), bisect.bisect_right(self._lengths, hi)
        window = self._by_length[start:end]
        if len(self.names) <= LARGE_CATALOG:
            return _Window(window, self._names_by_length[start:end])
        words = sorted((w for w in set(query.split()) if len(w) >= 3), key=lambda w: len(self._postings.get(w, ())))
        allowed = set().union(*(self._postings.get(w, set()) for w in words[:2])) if words else set()
        return {i: self.names[i] for i in window if i in allowed}

    def _link_phrase(self, phrase: str, budget: list[int] | None = None
                     ) -> tuple[str, int, float] | list[tuple[str, int, float]] | None:
        """Link the whole phrase, else the titles of a list in it ("Heat, Fargo and Alien").

        Each part of the list (between commas and and/or/but/&) is linked alone when it names a
        title exactly; otherwise the longest run of up to `MAX_JOIN` parts that names one nearly
        exactly ("Sense and Sensibility"), else the part shrunk from the right to a title-like
        (capitalised) prefix ("Alien last week"). `budget` ([lookups left]) bounds the title
        lookups of one message, whatever its length.
        """
        budget = budget if budget is not None else [MAX_LINKS]

        def link(text: str) -> tuple[int, float] | None:
            if budget[0] <= 0 or not text:
                return None
            budget[0] -= 1
            return self.link(text)

        phrase = _undetermined(phrase.strip(" \"'"))
        whole = link(phrase)
        if whole is not None:
            return (phrase, *whole)
        pieces = re.split(r"(\s+(?:and|or|but|&)\s+|\s*,\s*)", phrase)
        parts, seps = pieces[0::2][:MAX_MENTIONS], pieces[1::2]
        if len(parts) < 2:
            return self._link_shrunk(phrase, link, title_like=False)
        out: list[tuple[str, int, float]] = []
        i = 0
        while i < len(parts) and budget[0] > 0:
            text = _undetermined(parts[i].strip())
            hit = link(text)
            if hit is not None and hit[1] >= 100.0:
                out.append((text, *hit))
                i += 1
                continue
            for j in range(min(len(parts), i + MAX_JOIN), i + 1, -1):
                joined = _undetermined((parts[i] + "".join(seps[m] + parts[m + 1] for m in range(i, j - 1))).strip())
                run = link(joined)
                if run is not None and run[1] >= JOIN_SCORE:  # a fuzzy run would swallow the next title
                    out.append((joined, *run))
                    i = j
                    break
            else:
                got = (text, *hit) if hit is not None else self._link_shrunk(text, link, title_like=True, whole=False)
                if got is not None:
                    out.append(got)
                i += 1
        return out or None

    def _link_shrunk(self, text: str, link: Callable[[str], tuple[int, float] | None], *, title_like: bool,
                     whole: bool = True) -> tuple[str, int, float] | None:
        """`text` linked whole (unless `whole=False`: already tried), else its longest linkable
        prefix of whole words (title-like if asked)."""
        hit = link(text) if whole else None
        if hit is not None:
            return (text, *hit)
        words = text.split()[:MAX_TITLE_WORDS]
        for end in range(len(words) - 1, 0, -1):
            prefix = " ".join(words[:end])
            if title_like and not self._is_title_like(prefix):
                continue
            hit = link(prefix)
            if hit is not None:
                return (prefix, *hit)
        return None

    def _is_title_like(self, phrase: str) -> bool:
        words = [w for w in re.findall(r"[\w'’-]+", phrase) if w.lower() not in {"and", "or", "the", "of", "a"}]
        return bool(words) and all(w[0].isupper() or w[0].isdigit() for w in words) and not self.find_categories(phrase)


MAX_CHARS = 2000  # of one message read (the end of a longer one): a bound on the work per request
MAX_MENTIONS = 12  # title phrases looked up per message (and titles read from one listed phrase)
MAX_JOIN = 3  # list parts one title may span ("Sense and Sensibility": 2)
JOIN_SCORE = 95.0  # the least link score of a title spanning several list parts (near-exact)
MAX_LINKS = 24  # title lookups per message: bounds the reading of a long message on a large catalog
MAX_TITLE_WORDS = 10  # words of a run-on part tried as a title's prefix


def understand(text: str, index: CatalogIndex) -> Understanding:
    """Read one user message (see the module docstring for the rules)."""
    text = text.strip()[-MAX_CHARS:]
    linked: list[Linked] = []
    unmatched: list[str] = []
    seen: set[str] = set()

    def add(phrase: str, idx: int, score: float, action: str) -> None:
        item = index.ids[idx]
        if item not in seen:
            seen.add(item)
            linked.append(Linked(phrase, item, index.titles[idx], action, score))

    def action_of(kind: str) -> str:
        k = kind.lower()
        if re.fullmatch(NEGATIVE, k):
            return index.negative_action
        if re.fullmatch(EXCLUDE, k):
            return "exclude"
        if re.fullmatch(NAMED, k):
            return "mention"
        return index.positive_action

    rest = text  # the text with quoted and linked phrases blanked out (categories are read from it)
    lookups = 0
    for m in QUOTED.finditer(text):
        lookups += 1
        if lookups > MAX_MENTIONS:
            break
        phrase = m.group(1) or m.group(2)
        rest = rest[: m.start()] + " ; " .ljust(m.end() - m.start()) + rest[m.end():]
        before = text[: m.start()].lower()
        kind = next((k.group("kind") for k in MENTION.finditer(before[-40:] + " x")), "mention")
        hit = index.link(phrase)
        if hit is None:
            unmatched.append(phrase)
        else:
            add(phrase, *hit, action_of(kind) if kind != "mention" else "mention")
    pos = 0
    budget = [MAX_LINKS]  # shared by every phrase of this message
    while (found := MENTION.search(rest, pos)) is not None and lookups < MAX_MENTIONS and budget[0] > 0:
        kind, phrase = found.group("kind"), found.group("phrase")
        if _in_title(rest, found.start("kind"), kind):
            pos = found.end("kind")
            continue
        lookups += 1
        # "loved X but hated Y": X ends where the next trigger starts
        cut = next((c for c in _NEXT_TRIGGER.finditer(phrase, 1)
                    if not _in_title(phrase, c.start("kind"), c.group("kind"))), None)
        if cut is not None:
            phrase = phrase[: cut.start()]
        pos = found.start("phrase") + max(1, len(phrase))
        phrase = _TRAILING.sub("", phrase.strip())
        if not phrase:
            continue
        got = index._link_phrase(phrase, budget)
        if got is None:
            cleaned = DETERMINERS.sub("", phrase)
            if re.fullmatch(NAMED, kind.lower()) or index._is_title_like(cleaned):
                unmatched.append(cleaned)
            continue
        for p, idx, score in (got if isinstance(got, list) else [got]):
            add(p, idx, score, action_of(kind))
            rest = rest.replace(p, " " * len(p), 1)

    categories = index.find_categories(rest)
    years = find_years(text)
    k = find_k(text)
    asks = bool(ASK.search(text))
    about = bool(QUESTION_ABOUT.search(text)) and bool(linked) and not asks
    recommend = not SMALL_TALK.match(text) and not about and (
        asks or bool(categories) or years is not None
        or any(x.action in (index.positive_action, index.negative_action) for x in linked))
    return Understanding(recommend, k, categories, years, linked, list(dict.fromkeys(unmatched)))


DECADE_WORDS = {"twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
                "seventies": 1970, "eighties": 1980, "nineties": 1990}
_DECADE_WORD = re.compile(r"\b(?:" + "|".join(DECADE_WORDS) + r")\b")


def find_years(text: str) -> tuple[int, int] | None:
    low = text.lower()
    m = re.search(r"\b(?:19|20)?(\d)0'?s\b", low)
    if m:
        full = re.search(r"\b(1[89]|20)(\d)0'?s\b", low)
        if full:
            start = int(full.group(1) + full.group(2) + "0")
        else:
            d = int(m.group(1))
            start = (2000 if d <= 2 else 1900) + d * 10
        return start, start + 9
    word = _DECADE_WORD.search(low)
    if word:
        start = DECADE_WORDS[word.group(0)]
        return start, start + 9
    m = re.search(r"\b(before|after|since|from|in)\s+((?:1[89]|20)\d\d)\b", low)
    if m:
        y = int(m.group(2))
        return {"before": (0, y - 1), "after": (y + 1, 9999), "since": (y, 9999)}.get(m.group(1), (y, y))
    return None


def find_k(text: str) -> int | None:
    low = text.lower()
    m = re.search(r"\b(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|a couple of)\s+"
                  r"(?:[\w'-]+\s+){0,3}?[\w'-]+s\b", low)  # a number before a plural noun: "3 sci-fi movies"
    if not m:
        return None
    word = m.group(1)
    k = int(word) if word.isdigit() else NUMBER_WORDS[word]
    return max(1, min(10, k))


def explain(item_index: int, index: CatalogIndex, understood: Understanding, liked: Sequence[int]) -> str:
    """Facts about a pick: its categories (the asked ones first), what it shares with what the user liked."""
    cats = [c for c in index.categories[item_index] if c.lower() != "unknown"]
    wanted = [c for c in cats if c in understood.categories]
    text = ", ".join((wanted + [c for c in cats if c not in wanted])[:3])
    best, shared = None, 0
    for j in liked:
        n = len(set(cats) & set(index.categories[j]))
        if n > shared:
            best, shared = j, n
    if best is not None:
        common = sorted(set(cats) & set(index.categories[best]))
        text += f"; it shares {_and(common)} with {display_title(index.titles[best])[0]}, which you liked"
    return text + "." if text else ""


def shown(title: str) -> str:
    """A catalog title as a person writes it: `"Usual Suspects, The (1995)"` -> `"The Usual Suspects (1995)"`."""
    name, year = display_title(title)
    return f"{name} ({year})" if year else name


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
