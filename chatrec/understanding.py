"""What a request means, read by the bundle's own text encoder (no word list of any one domain).

`TextSpace` holds one catalog version in the encoder's space: the item vectors (the same texts
and encoder the SIDs were fitted on, so the on-disk embedding cache usually has them), one
vector per category (the mean of a few phrasings of its name, `"{name} {domain}s"`, fused with
the centroid of its items' texts), and a few intent prototypes (asking for picks, asking why,
chatting about something else). One request costs one encoder call on a short text plus a
matrix-vector product over the catalog.

How it reads a request (`TextSpace.read`):
- **Categories**: the request vector's cosine to each category vector is standardised over the
  catalog's categories (z-score, name and centroid evidence averaged); the best category is
  implied when its z-score is at least `category_min_z`, the next ones when within
  `category_margin` of it (at most `max_categories`). A catalog's categories are understood
  from their own names and items, whatever the domain.
- **Negations**: the words after "not / no / without / less / fewer / avoid / skip / anything but"
  (up to punctuation or "but") are read the same way, and what they imply is excluded; the rest
  of the message is read for what is wanted.
- **Intent**: the nearest prototype sentence decides between a request and off-topic chat when
  no rule (a title, a category, a year, a follow-up) has decided already.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatrec.errors import ConfigError

MAX_READ_CHARS = 300  # of one message given to the encoder (its end): bounds the cost of a long message
MAX_NEGATIONS = 2     # negated phrases read per message
CACHE_SIZE = 4096     # readings kept by text
Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> [N, d] L2-normalised

NEGATION = re.compile(
    r"\b(?:not|no|without|less|fewer|avoid|skip|anything but|except|other than|apart from|besides|nothing|none of|don't want|do not want|"
    r"don't like|do not like|hate|tired of|sick of|too much)\s+(?:a |an |any |the |more |so |too |of )?"
    r"(?P<phrase>[^.,;!?]+?)(?=\s+\b(?:but|please|instead|though)\b|[.,;!?]|$)", re.I)
REFERENCE = re.compile(r"^(?:those|these|them|that|this|it|ones?|that one|this one|the same|same|again|"
                       r"much|more|really|sure|yet|seen|\w+ ones?|one of (?:those|these|them))$", re.I)

# English function words and the words of asking: a message made of these alone (with titles, years
# and follow-up words removed) says nothing about what is wanted, so it implies no category
FUNCTION_WORDS = frozenset(["a", "an", "the", "and", "or", "but", "if", "then", "so", "of", "to", "in", "on", "at", "by", "for", "from", "with", "about", "as", "into", "like", "than", "too", "very", "just", "also", "i", "me", "my", "mine", "we", "us", "our", "you", "your", "he", "she", "it", "its", "they", "them", "their", "this", "that", "these", "those", "there", "here", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "all", "any", "some", "more", "most", "other", "another", "else", "such", "no", "not", "only", "own", "same", "few", "many", "much", "is", "am", "are", "was", "were", "be", "been", "being", "have", "has", "had", "do", "does", "did", "will", "would", "shall", "should", "can", "could", "may", "might", "must", "something", "anything", "nothing", "one", "ones", "thing", "things", "stuff", "kind", "sort", "type", "lot", "lots", "bit", "please", "thanks", "ok", "okay", "recommend", "recommended", "suggest", "suggestion", "suggestions", "give", "show", "find", "get", "pick", "picks", "want", "need", "like", "liked", "love", "loved", "enjoy", "enjoyed", "watch", "watched", "see", "seen", "read", "try", "tried", "buy", "bought", "put", "tonight", "today", "now", "next", "again", "new", "different", "good", "great", "nice", "best", "really", "maybe", "perhaps", "let", "let's", "i'd", "i'm", "i've", "it's", "what's", "that's", "don't", "before", "after", "since", "during", "older", "newer", "earlier", "recent", "later", "year", "years", "decade"])
WORD = re.compile(r"[a-z][a-z'’-]+")

INTENTS: dict[str, tuple[str, ...]] = {
    "recommend": ("recommend me a {d}", "suggest a few {ds}", "I'm in the mood for something fun",
                  "what {d} should I try next?", "any good {ds}?", "something exciting, please",
                  "I want a {d} about love", "looking for {ds} like the ones I liked", "show me more options"),
    "why": ("why did you pick those?", "why these?", "why did you recommend that?",
            "what makes you think I would like them?", "how did you choose these?"),
    "off_topic": ("tell me a joke", "how are you today?", "what's the weather like?", "who are you?",
                  "what is the capital of France?", "write me a poem", "what time is it?", "do you like pizza?",
                  "can you help me with my homework?", "what's two plus two?", "who won the game last night?",
                  "tell me something about yourself"),
}


@dataclass
class UnderstandingConfig:
    """How `TextSpace` turns a request vector into categories and an intent."""

    category_min_z: float = field(default=1.25, metadata={
        "help": "Least z-score (over the catalog's categories) for the best category to count as implied."})
    category_margin: float = field(default=0.3, metadata={
        "help": "Further categories count when their z-score is within this of the best one."})
    max_categories: int = field(default=2, metadata={"help": "Most categories one request implies."})
    centroid_weight: float = field(default=0.5, metadata={
        "help": "Weight of the category's item centroid against its name phrasings (0..1)."})

    def __post_init__(self) -> None:
        if self.max_categories < 1:
            raise ConfigError(f"`max_categories` must be >= 1, got {self.max_categories}")
        if not 0 <= self.centroid_weight <= 1:
            raise ConfigError(f"`centroid_weight` must be in 0..1, got {self.centroid_weight}")


@dataclass
class Reading:
    """What the encoder read in one message."""

    vector: np.ndarray | None                      # [d] the wanted part, None when nothing is left of it
    categories: list[tuple[str, float]]            # implied categories with their z-scores
    avoid: list[tuple[str, float]]                 # categories the negated words imply
    negated: list[str]                             # the negated phrases
    intent: str                                    # recommend | why | off_topic
    intent_score: float


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def plural_word(word: str) -> str:
    return word if word.endswith("s") else word + "s"


class TextSpace:
    """One catalog in the text encoder's space (see the module docstring)."""

    def __init__(self, encode: Encode, item_vectors: np.ndarray, item_categories: Sequence[Sequence[str]],
                 domain: str = "item", config: UnderstandingConfig | None = None):
        self.encode_many = encode
        self.config = config or UnderstandingConfig()
        self.items = np.ascontiguousarray(item_vectors, dtype=np.float32)  # [N, d]
        if len(self.items) != len(item_categories):
            raise ConfigError(f"{len(self.items)} item vectors for {len(item_categories)} items")
        names = sorted({str(c) for row in item_categories for c in row if str(c) and str(c).lower() != "unknown"})
        self.category_names = names
        self.member = np.array([[n in set(map(str, row)) for n in names] for row in item_categories],
                               bool).reshape(len(item_categories), len(names))  # [N, C]
        self.stop = FUNCTION_WORDS | {domain.lower(), plural_word(domain).lower()}
        self._cache: dict[str, Reading] = {}
        d, ds = domain, plural_word(domain)
        if names:
            phrasings = [p.format(c=n, d=d, ds=ds) for n in names for p in ("{c}", "{c} {ds}", "a {c} {d}")]
            by_name = encode(phrasings).reshape(len(names), 3, -1).mean(axis=1)  # [C, d]
            members = [np.array([n in row for row in item_categories]) for n in names]
            centroid = np.stack([self.items[m].mean(axis=0) for m in members])  # [C, d]
            self.category_name_vectors = _unit(by_name)
            self.category_centroids = _unit(centroid)
        else:
            self.category_name_vectors = self.category_centroids = np.zeros((0, self.items.shape[1]), np.float32)
        labels, protos = [], []
        for intent, sentences in INTENTS.items():
            for s in sentences:
                labels.append(intent)
                protos.append(s.format(d=d, ds=ds))
        self.intent_labels = labels
        self.intent_vectors = _unit(encode(protos))

    @classmethod
    def for_catalog(cls, catalog: Any, domain: str, embedding: Any = None,
                    config: UnderstandingConfig | None = None) -> TextSpace:
        """Item vectors of `catalog["text"]` with the encoder of `embedding` (an `EmbeddingConfig`;
        default all-MiniLM-L6-v2), cached on disk by content hash like the SID fit's."""
        from chatrec.embeddings import EmbeddingConfig, embed_texts, load_encoder

        embedding = embedding or EmbeddingConfig()
        embedding.progress = False
        texts = (catalog["text"] if "text" in catalog.columns else catalog["title"]).astype(str).tolist()
        vectors = embed_texts(texts, embedding)
        encoder = load_encoder(embedding.model, embedding.device)

        def encode(batch: Sequence[str]) -> np.ndarray:
            import torch

            # a request's few short texts on one thread: on a busy CPU (the engine, other requests)
            # two threads spin-wait on each other, measured 560 ms against 17-80 ms for one text
            threads = torch.get_num_threads()
            if len(batch) <= 8:
                torch.set_num_threads(1)
            try:
                return np.asarray(encoder.encode(list(batch), batch_size=64, show_progress_bar=False,
                                                 convert_to_numpy=True, normalize_embeddings=True), dtype=np.float32)
            finally:
                torch.set_num_threads(threads)

        cats = catalog["categories"] if "categories" in catalog.columns else [[] for _ in range(len(catalog))]
        return cls(encode, vectors, [list(c) if c is not None else [] for c in cats], domain, config)

    # scores ------------------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        return self.encode_many([text])[0]

    def category_scores(self, vector: np.ndarray) -> np.ndarray:
        """[C] z-scores of each category for one request vector."""
        if not self.category_names:
            return np.zeros(0, np.float32)
        w = self.config.centroid_weight
        if len(self.category_names) == 1:
            return np.zeros(1, np.float32)
        return (1 - w) * _z(self.category_name_vectors @ vector) + w * _z(self.category_centroids @ vector)

    def implied(self, vector: np.ndarray) -> list[tuple[str, float]]:
        z = self.category_scores(vector)
        if len(z) < 2:
            return []
        order = np.argsort(-z)
        best = float(z[order[0]])
        if best < self.config.category_min_z:
            return []
        out = [(self.category_names[int(i)], float(z[i])) for i in order[: self.config.max_categories]
               if best - float(z[i]) <= self.config.category_margin]
        return out

    def item_similarity(self, vector: np.ndarray) -> np.ndarray:
        """[N] cosine of every item's text to the request."""
        return self.items @ vector

    def intent(self, vector: np.ndarray) -> tuple[str, float]:
        sims = self.intent_vectors @ vector
        best = int(np.argmax(sims))
        return self.intent_labels[best], float(sims[best])

    # one message -------------------------------------------------------------------------------
    def forget(self) -> None:
        """Drop the cached readings (to time a cold read)."""
        self._cache.clear()

    def has_content(self, text: str) -> bool:
        """Whether `text` holds a word that is not a function word, the domain word or a number."""
        return any(w not in self.stop for w in WORD.findall(text.lower()))

    def read(self, text: str, *, skip: Sequence[str] = ()) -> Reading:
        """Read `text` (the phrases in `skip`, e.g. linked titles, years, blanked out first; only the
        last `MAX_READ_CHARS` characters). Readings are cached by text (earlier turns come back
        with every request of a conversation)."""
        text = text[-MAX_READ_CHARS:]
        for phrase in skip:
            if phrase:
                text = text.replace(phrase, " ")
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        reading = self._read(text)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[text] = reading
        return reading

    def _read(self, text: str) -> Reading:
        negated: list[str] = []
        wanted = text
        for m in NEGATION.finditer(text):
            phrase = m.group("phrase").strip()
            if phrase and not REFERENCE.match(phrase) and self.has_content(phrase) and phrase not in negated \
                    and len(negated) < MAX_NEGATIONS:
                negated.append(phrase)
                wanted = wanted.replace(m.group(0), " ")
        texts = [text, *negated]
        has_wanted = self.has_content(wanted)
        if has_wanted and wanted != text:
            texts.append(wanted)
        vectors = self.encode_many(texts)
        intent, score = self.intent(vectors[0])
        avoid: list[tuple[str, float]] = []
        for v in vectors[1: 1 + len(negated)]:
            avoid += [c for c in self.implied(v) if c[0] not in {a for a, _ in avoid}]
        vector = vectors[-1] if has_wanted else None
        categories = [c for c in self.implied(vector) if c[0] not in {a for a, _ in avoid}] if vector is not None else []
        return Reading(vector, categories, avoid, negated, intent, score)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)
