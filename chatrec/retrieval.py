"""Top-K retrieval (constrained beam search over the item trie) and ranking, over an engine.

Both are pure functions of a `logprobs_fn(prefix_ids, continuations, token_ids) -> [B, T]`
(`Engine.next_token_logprobs`) and the trie, so they are tested without a model and run the same
on every engine. The prompt is shared by every beam, so each level is one batched call whose
prefix is computed once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from chatrec.errors import ConfigError
from chatrec.trie import ItemTrie

# what `Recommender` (and so `chatrec serve` and `chatrec eval`) uses: on ML-100k, 941 users, the prior
# scored like the model (validation NDCG@10 0.1128 vs 0.1125; test -0.0034 to +0.0017 on three models,
# both 95% intervals measured hold 0) and saves the last level's model call (BENCHMARKS.md, "Retrieval
# at about one prefill", "the last SID level without the model")
SERVED_LAST_LEVEL = "prior"
LAST_LEVELS = ("model", "prior")
PRIOR_EXPONENT = 0.5  # chosen on ML-100k validation users (0 / 0.5 / 1 / 2: 0.1081 / 0.1128 / 0.1102 / 0.1066)

LogprobsFn = Callable[[Sequence[int], Sequence[Sequence[int]], Sequence[int]], np.ndarray]


@dataclass
class RetrievalConfig:
    """Beam search settings."""

    k: int = field(default=10, metadata={"help": "Number of distinct items to return."})
    beam_width: int | None = field(
        default=None, metadata={"help": "Beams kept per level (default: max(k, 2 * k) = 2k)."})
    fallback: bool = field(
        default=True, metadata={"help": "When fewer than k items qualify, fill with items sharing a SID prefix."})
    renormalize: bool = field(
        default=True, metadata={"help": "Score each level's log-probs renormalised over the beam's allowed children "
                                        "(as a masked softmax would), not over the whole vocabulary."})
    search: str = field(
        default="beam", metadata={"help": "beam: keep `width` prefixes per level; best_first: expand the best "
                                          "prefix first (exact top-k of the renormalised scores, see `best_first`)."})
    max_expansions: int = field(
        default=2000, metadata={"help": "best_first: most prefixes expanded before answering with what it has."})
    last_level: str = field(
        default="model", metadata={"help": "Scores on the trie's last (disambiguation) level: model (asked like "
                                           "every level) or prior (no model call: the items sharing all earlier "
                                           "codes get (index + 1) ** -prior_exponent, renormalised; the index "
                                           "orders them by training popularity)."})
    prior_exponent: float = field(
        default=PRIOR_EXPONENT, metadata={"help": "Exponent of the last-level prior: 0 = uniform, larger = more weight on the "
                                       "most popular item of a cell (0.5 was chosen on ML-100k validation users)."})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"`k` must be >= 1, got {self.k}")
        if self.last_level not in LAST_LEVELS:
            raise ConfigError(f"`last_level` must be 'model' or 'prior', got {self.last_level!r}")
        if not self.prior_exponent >= 0:
            raise ConfigError(f"`prior_exponent` must be >= 0, got {self.prior_exponent}")
        if self.last_level == "prior" and not self.renormalize:
            raise ConfigError("`last_level` prior needs renormalize=True (the prior is a distribution over children)")
        if self.search not in ("beam", "best_first"):
            raise ConfigError(f"`search` must be 'beam' or 'best_first', got {self.search!r}")
        if self.beam_width is not None and self.beam_width < self.k:
            raise ConfigError(f"`beam_width` must be >= k ({self.k}), got {self.beam_width}")

    @property
    def width(self) -> int:
        return self.beam_width or 2 * self.k


@dataclass(frozen=True)
class ScoredItem:
    """One retrieved item: trie item index, id, token sequence, score (sum of log-probs)."""

    index: int
    item_id: str
    tokens: tuple[int, ...]
    score: float
    exact: bool = True  # False: added by the shared-prefix fallback (score = its prefix's log-prob)


def top_k(
    logprobs_fn: LogprobsFn,
    prompt_ids: Sequence[int],
    trie: ItemTrie,
    config: RetrievalConfig | None = None,
    allowed: np.ndarray | None = None,
) -> list[ScoredItem]:
    """The K most probable allowed items after `prompt_ids` (which ends with `<|sid_begin|>`).

    Beam search over the trie: each level extends every kept prefix by its allowed children in
    one batched call and keeps the `width` best; the last level's leaves are distinct items.
    """
    cfg = config or RetrievalConfig()
    if cfg.search == "best_first":
        return best_first(logprobs_fn, prompt_ids, trie, cfg, allowed)
    node_allowed = None if allowed is None else trie.node_allowed(allowed)
    prior = _last_level_prior(trie, cfg)
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    kept_per_level: list[list[tuple[tuple[int, ...], float]]] = []
    for _level in range(trie.depth):
        children = [trie.allowed_next(list(p), node_allowed=node_allowed) for p, _ in beams]
        union = np.unique(np.concatenate(children)) if children else np.empty(0, np.int64)
        if not len(union):
            break
        rows = _level_scores(logprobs_fn, prompt_ids, [p for p, _ in beams], children, cfg.renormalize, prior)
        cand: list[tuple[tuple[int, ...], float]] = []
        for b, (prefix, score) in enumerate(beams):
            for t, value in zip(children[b], rows[b], strict=True):
                cand.append(((*prefix, int(t)), score + float(value)))
        cand.sort(key=lambda c: -c[1])
        beams = cand[: cfg.width]
        kept_per_level.append(beams)

    results: list[ScoredItem] = []
    seen: set[int] = set()
    if len(kept_per_level) == trie.depth:
        for seq, score in beams:
            idx = trie.item_index(seq)
            if idx is not None and idx not in seen:
                seen.add(idx)
                results.append(ScoredItem(idx, str(trie.item_ids[idx]), seq, score))
            if len(results) == cfg.k:
                return results
    if cfg.fallback and len(results) < cfg.k:
        results.extend(_fallback(trie, kept_per_level, cfg.k - len(results), seen, allowed))
    return results[: cfg.k]


def _last_level_prior(trie: ItemTrie, cfg: RetrievalConfig) -> tuple[int, int, float] | None:
    """(depth of the last level's parents, token id of disambiguation index 0, exponent) when the
    last level is scored by the prior, else None."""
    if cfg.last_level != "prior" or trie.depth < 2 or not trie.n_items:
        return None
    return trie.depth - 1, trie.first_token(trie.depth - 1), cfg.prior_exponent


def _level_scores(logprobs_fn: LogprobsFn, prompt_ids: Sequence[int], prefixes: Sequence[tuple[int, ...]],
                  children: Sequence[np.ndarray], renormalize: bool,
                  prior: tuple[int, int, float] | None = None) -> list[np.ndarray]:
    """Each prefix's score per allowed child, from one batched call for the prefixes that need one.

    Renormalised over a prefix's allowed children, a single child scores log(1) = 0 whatever the
    model says, so such prefixes are not sent to the model: with SIDs whose last (disambiguation)
    level is almost always a single code, that saves the last level's whole model call. With
    `prior` = (depth, base, exponent), prefixes of that depth score their children
    (index + 1) ** -exponent (index = token - base), renormalised, without the model.
    """
    rows: list[np.ndarray] = [np.zeros(len(c)) for c in children]
    if prior is not None:
        depth, base, exponent = prior
        for b, c in enumerate(children):
            if len(prefixes[b]) == depth and len(c) > 1:
                w = -exponent * np.log(np.asarray(c, dtype=np.float64) - base + 1)
                rows[b] = w - np.logaddexp.reduce(w)
    ask = [b for b, c in enumerate(children) if (len(c) > 1 or (len(c) == 1 and not renormalize))
           and (prior is None or len(prefixes[b]) != prior[0])]
    if not ask:
        return rows
    union = np.unique(np.concatenate([children[b] for b in ask]))
    lp = logprobs_fn(prompt_ids, [list(prefixes[b]) for b in ask], union.tolist())  # [len(ask), U]
    col = {int(t): j for j, t in enumerate(union)}
    for i, b in enumerate(ask):
        row = lp[i, [col[int(t)] for t in children[b]]]
        rows[b] = row - np.logaddexp.reduce(row) if renormalize else row
    return rows


def best_first(
    logprobs_fn: LogprobsFn,
    prompt_ids: Sequence[int],
    trie: ItemTrie,
    config: RetrievalConfig,
    allowed: np.ndarray | None = None,
    batch: int = 8,
) -> list[ScoredItem]:
    """Greedy best-first search over SID prefixes: pop the best-scoring prefix, expand its allowed
    children, and emit a complete item when it is the best of everything still open.

    With renormalised scores every step's score is a log-probability (<= 0), so a prefix's score
    bounds every item below it and the items come out in exact score order: the true top-k of the
    renormalised scores, which beam search only approximates. Up to `batch` open prefixes are
    expanded per model call (the order stays exact: an item is emitted only from the top of the
    queue). Stops after `config.max_expansions` expansions and fills from the shared-prefix fallback.
    """
    import heapq

    if not config.renormalize:
        raise ConfigError("best_first needs renormalize=True (its bound holds for per-level log-probs)")
    node_allowed = None if allowed is None else trie.node_allowed(allowed)
    prior = _last_level_prior(trie, config)
    heap: list[tuple[float, tuple[int, ...]]] = [(-0.0, ())]
    results: list[ScoredItem] = []
    seen: set[int] = set()
    expanded: list[tuple[tuple[int, ...], float]] = []
    expansions = 0
    while heap and len(results) < config.k and expansions < config.max_expansions:
        group: list[tuple[tuple[int, ...], float]] = []
        while heap and len(group) < batch:
            neg, prefix = heap[0]
            if len(prefix) == trie.depth:
                if group:
                    break  # expand what was popped first; the item is re-checked against its children
                heapq.heappop(heap)
                idx = trie.item_index(prefix)
                if idx is not None and idx not in seen:
                    seen.add(idx)
                    results.append(ScoredItem(idx, str(trie.item_ids[idx]), prefix, -neg))
                if len(results) == config.k:
                    return results
                continue
            heapq.heappop(heap)
            group.append((prefix, -neg))
        if not group:
            continue
        children = [trie.allowed_next(list(p), node_allowed=node_allowed) for p, _ in group]
        if not sum(len(c) for c in children):
            continue
        rows = _level_scores(logprobs_fn, prompt_ids, [p for p, _ in group], children, True, prior)
        for b, (prefix, score) in enumerate(group):
            expansions += 1
            expanded.append((prefix, score))
            for t, value in zip(children[b], rows[b], strict=True):
                heapq.heappush(heap, (-(score + float(value)), (*prefix, int(t))))
    if config.fallback and len(results) < config.k:
        by_depth: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in range(trie.depth)]
        for prefix, score in sorted(expanded, key=lambda e: -e[1]):
            if prefix:
                by_depth[len(prefix) - 1].append((prefix, score))
        results.extend(_fallback(trie, [lvl for lvl in by_depth if lvl], config.k - len(results), seen, allowed))
    return results[: config.k]


def _fallback(trie: ItemTrie, kept_per_level: list[list[tuple[tuple[int, ...], float]]], need: int,
              seen: set[int], allowed: np.ndarray | None) -> list[ScoredItem]:
    """Items sharing the longest scored prefixes (deepest level first, best prefix first)."""
    out: list[ScoredItem] = []
    for level in range(len(kept_per_level) - 1, -1, -1):
        for prefix, score in kept_per_level[level]:
            for idx in trie.items_under(list(prefix), allowed):
                idx = int(idx)
                if idx in seen:
                    continue
                seen.add(idx)
                seq = tuple(int(t) for t in trie.sequences[idx])
                out.append(ScoredItem(idx, str(trie.item_ids[idx]), seq, score, exact=False))
                if len(out) == need:
                    return out
    # nothing scored shares a prefix with the rest: any allowed item, in trie order
    for idx in trie.items_under([], allowed):
        idx = int(idx)
        if idx not in seen:
            seen.add(idx)
            seq = tuple(int(t) for t in trie.sequences[idx])
            out.append(ScoredItem(idx, str(trie.item_ids[idx]), seq, -math.inf, exact=False))
            if len(out) == need:
                break
    return out


# ranking ---------------------------------------------------------------------------------------
_ACTION_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TERM = re.compile(r"([+-]?)(?:((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)\*)?([a-z_][a-z0-9_]*)")  # [sign][number*]action


@dataclass
class ValueFunction:
    """A linear value over action probabilities, e.g. P(like) - 10 * P(dislike)."""

    weights: Mapping[str, float] = field(
        default_factory=lambda: {"like": 1.0, "dislike": -10.0},
        metadata={"help": "Weight of each action's probability; actions not listed count 0."})

    def __post_init__(self) -> None:
        if not self.weights:
            raise ConfigError("`weights` must name at least one action, got {}")

    @classmethod
    def parse(cls, text: str) -> ValueFunction:
        """Parse `"like - 10*dislike"` / `"like=1,dislike=-10"` into weights.

        The whole text must parse (no part is skipped) and every weight must be a finite number:
        a request's value function is client input.
        """
        src = text.replace(" ", "")
        weights: dict[str, float] = {}
        if "=" in src:
            for part in src.split(","):
                name, _, w = part.partition("=")
                try:
                    value = float(w)
                except ValueError:
                    value = math.nan
                if not _ACTION_NAME.fullmatch(name) or not math.isfinite(value):
                    raise ConfigError(f"cannot parse a value function from {text!r}: {part!r} needs a number after "
                                      "'=' (finite) and an action before it; write e.g. 'like=1,dislike=-10'")
                weights[name] = weights.get(name, 0.0) + value
        else:
            if not re.fullmatch(rf"(?:{_TERM.pattern})+", src):
                raise ConfigError(f"cannot parse a value function from {text!r}; write e.g. 'like-10*dislike'")
            for i, (sign, coef, name) in enumerate(_TERM.findall(src)):
                if i and not sign:  # terms after the first need their sign: 'like dislike' is not a sum
                    raise ConfigError(f"cannot parse a value function from {text!r}: '+' or '-' needed before {name!r}")
                value = float(coef) if coef else 1.0
                if not math.isfinite(value):
                    raise ConfigError(f"cannot parse a value function from {text!r}: {coef!r} is not a finite number")
                weights[name] = weights.get(name, 0.0) + (-value if sign == "-" else value)
        if not weights:
            raise ConfigError(f"cannot parse a value function from {text!r}; write e.g. 'like-10*dislike'")
        return cls(weights)

    def __call__(self, probs: Mapping[str, float]) -> float:
        return float(sum(w * probs.get(a, 0.0) for a, w in self.weights.items()))


@dataclass(frozen=True)
class RankedItem:
    """A candidate with its action distribution and value."""

    item_id: str
    probs: dict[str, float]
    value: float


def split_common_prefix(seqs: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """The longest common prefix of `seqs` and each sequence's remainder (at least one token each)."""
    if not seqs:
        return [], []
    n = min(len(s) for s in seqs) - 1  # keep >= 1 token per continuation
    first = seqs[0]
    cut = 0
    while cut < n and all(s[cut] == first[cut] for s in seqs):
        cut += 1
    return list(first[:cut]), [list(s[cut:]) for s in seqs]


def rank(
    logprobs_fn: LogprobsFn,
    prompts: Sequence[Sequence[int]],
    item_ids: Sequence[str],
    action_token_ids: Mapping[str, int],
    value_fn: Callable[[Mapping[str, float]], float] | None = None,
) -> list[RankedItem]:
    """Rank candidates by value of P(action | history, item), best first.

    `prompts[i]` is the action prompt for candidate `item_ids[i]` (ending with the assistant's
    generation prompt); the action distribution is renormalised over the action tokens.
    """
    if len(prompts) != len(item_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(item_ids)} candidates")
    if not prompts:
        return []
    value = value_fn or ValueFunction()
    names = list(action_token_ids)
    ids = [int(action_token_ids[a]) for a in names]
    prefix, conts = split_common_prefix(prompts)
    lp = logprobs_fn(prefix, conts, ids)                          # [B, A]
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)      # renormalise over actions
    probs = np.exp(lp)
    out = []
    for i, item in enumerate(item_ids):
        p = {a: float(probs[i, j]) for j, a in enumerate(names)}
        out.append(RankedItem(str(item), p, value(p)))
    out.sort(key=lambda r: -r.value)
    return out
