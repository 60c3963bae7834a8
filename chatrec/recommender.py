"""`Recommender`: the service the server, eval and finetune validation call.

It holds one catalog version (catalog, SIDs, token map, trie, constraint core) and one engine,
and turns histories of `(item_id, action)` into prompts, top-K items and ranked candidates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatrec.bundle import Bundle
from chatrec.constrained import ConstraintCore, FilterError, SpanTokens
from chatrec.engine import Engine
from chatrec.errors import BundleError, ChatrecError, ConfigError
from chatrec.metrics import top_k_from_scores
from chatrec.prompts import (
    DEFAULT_HISTORY_LEN,
    DEFAULT_SUMMARY_WORDS,
    Domain,
    HistoryEvent,
    action_messages,
    action_roles,
    block_trimmed,
    next_item_messages,
    sequence_prompt,
    taste_summary,
    tokens_per_event,
    year_from,
)
from chatrec.retrieval import (
    PRIOR_EXPONENT,
    SERVED_LAST_LEVEL,
    RankedItem,
    RetrievalConfig,
    ValueFunction,
    rank,
    top_k,
)
from chatrec.tokens import escape_special_tokens, sid_string

HistoryLike = Sequence[HistoryEvent] | Sequence[tuple[str, str]] | Sequence[Mapping[str, Any]]


class UnknownItemError(ChatrecError, ValueError):
    """A history or candidate names an item id the catalog does not have (HTTP 400)."""


class LimitError(ChatrecError, ValueError):
    """A request would cost more than a limit allows (HTTP 400 naming the limit's setting)."""

    def __init__(self, what: str, value: int, setting: str, limit: int):
        super().__init__(f"{what} ({value}) exceeds the limit {limit} (set by `{setting}`)")
        self.what, self.value, self.setting, self.limit = what, value, setting, limit


@dataclass(frozen=True)
class CostLimits:
    """Bounds checked before a request's work starts (None = unbounded; the server sets all three)."""

    max_prompt_tokens: int | None = None
    max_beam_tokens: int | None = None   # beams x prompt tokens of one retrieval
    max_rank_tokens: int | None = None   # candidates x prompt tokens of one ranking

    def check(self, what: str, value: int, name: str) -> None:
        limit = getattr(self, name)
        if limit is not None and value > limit:
            raise LimitError(what, value, "--" + name.replace("_", "-"), limit)


@dataclass(frozen=True)
class Recommendation:
    """One recommended item with its catalog title, SID span and score (sum of log-probs)."""

    item_id: str
    title: str
    sid: str
    score: float


def model_dir_of(bundle: Bundle) -> Path:
    """`BUNDLE/export/` (merged finetuned model) when present, else `BUNDLE/model/`."""
    if (bundle.export_dir / "config.json").exists():
        return bundle.export_dir
    if (bundle.model_dir / "config.json").exists():
        return bundle.model_dir
    raise BundleError(f"{bundle.root} has no model; run `chatrec tokenizer extend --bundle {bundle.root}` first")


class Recommender:
    """Top-K retrieval and ranking over one bundle and one engine."""

    def __init__(self, bundle: Bundle, engine: Engine, core: ConstraintCore, token_map: Any,
                 catalog: Any, sids: Any, model_dir: Path):
        self.bundle = bundle
        self.engine = engine
        self.core = core
        self.token_map = token_map
        self.model_dir = model_dir
        self.catalog = catalog
        self.titles: dict[str, str] = dict(zip(catalog["item_id"].astype(str), catalog["title"].astype(str),
                                               strict=True))
        self.codes: dict[str, tuple[int, ...]] = {
            str(i): tuple(int(c) for c in codes) for i, codes in zip(sids["item_id"], sids["codes"], strict=True)}
        years = catalog["year"] if "year" in catalog.columns else [None] * len(catalog)
        self.meta: dict[str, tuple[tuple[str, ...], int | None]] = {
            str(i): (tuple(cats) if cats is not None else (), year_from(str(t), y))
            for i, cats, t, y in zip(catalog["item_id"], catalog["categories"], catalog["title"], years, strict=True)}
        # prompts must look like the training data: the last `history_len` events + a taste summary
        build = (bundle.stage("build") or {}).get("config") or {}
        self.history_len = int(build.get("history_len", DEFAULT_HISTORY_LEN))
        self.summary_words = int(build.get("summary_max_words", DEFAULT_SUMMARY_WORDS))
        roles = action_roles(list(token_map.actions), build.get("positive_actions", ("like",)),
                             build.get("negative_actions", ("dislike",)))
        self.positive_actions = roles[0] or ("like",)
        # the plain-sequence prompt holds as many events as one training window (+ the asked action)
        self.per_event = tokens_per_event(token_map.n_levels)
        self.sequence_events = max(1, (int(build.get("window_tokens", 256)) - 1) // self.per_event)
        self.trim_history = True  # chatrec.prompts.block_trimmed on the plain sequence prompt
        self.negative_actions = roles[1] or ("dislike",)
        self.limits = CostLimits()
        self.domain = Domain(bundle.domain)  # the catalog's words in prompts (same as training)
        self.search = "beam"  # or "best_first" (chatrec.retrieval.best_first)
        self.last_level = SERVED_LAST_LEVEL  # "prior" or "model" (chatrec.retrieval.RetrievalConfig.last_level)
        self.prior_exponent = PRIOR_EXPONENT  # RetrievalConfig.prior_exponent
        # a model finetuned with `--reading events`: one token per (action, item), ranked in one prefill
        self.event_bias: np.ndarray | None = None
        if token_map.events:
            bias_path = model_dir / "event_bias.npy"
            if not bias_path.exists():
                raise BundleError(f"{bias_path} does not exist, but chatrec_tokens.json names event tokens; "
                                  "export the model again")
            self.event_bias = np.load(bias_path)
            ev = token_map.events
            self.event_items = {str(i): j for j, i in enumerate(ev["item_ids"])}
            self.event_actions = {str(a): j for j, a in enumerate(ev["actions"])}
            position = {str(i): j for j, i in enumerate(core.trie.item_ids)}
            self.event_trie_index = np.array([position.get(str(i), -1) for i in ev["item_ids"]], dtype=np.int64)

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, bundle: Bundle | str | os.PathLike[str], engine: str | Engine = "transformers",
                    model_dir: str | os.PathLike[str] | None = None, **engine_kwargs: Any) -> Recommender:
        """Load catalog, SIDs, token map and trie from `bundle` and start `engine` on its model."""
        import pandas as pd

        from tokenizer_ext import TokenMap, build_trie

        bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
        mdir = Path(model_dir) if model_dir is not None else model_dir_of(bundle)
        catalog = pd.read_parquet(bundle.require("catalog.parquet"))
        sids = pd.read_parquet(bundle.require("sids.parquet"))
        token_map = TokenMap.load(mdir / "chatrec_tokens.json")
        trie_path = mdir / "trie.npz"
        if trie_path.exists():
            from chatrec.trie import ItemTrie

            trie = ItemTrie.load(trie_path)
        else:
            trie = build_trie(sids, token_map)
        core = ConstraintCore(trie, SpanTokens.from_token_map(token_map), catalog[["item_id", "categories"]])
        if isinstance(engine, str):
            from serve.engines import load_engine

            engine = load_engine(engine, mdir, core, **engine_kwargs)
        elif getattr(engine, "core", True) is None:  # an engine wrapped around an in-memory model
            engine.core = core  # type: ignore[attr-defined]
        return cls(bundle, engine, core, token_map, catalog, sids, mdir)

    def close(self) -> None:
        self.engine.close()

    # inputs ------------------------------------------------------------------------------------
    def events(self, history: HistoryLike) -> list[HistoryEvent]:
        """Normalise a history of `HistoryEvent`, `(item_id, action)` or `{"item_id", "action"}`."""
        out = []
        for ev in history:
            if isinstance(ev, HistoryEvent):
                out.append(ev)
                continue
            if isinstance(ev, Mapping):
                item_id, action = str(ev["item_id"]), str(ev.get("action") or "watch")
            else:
                item_id, action = str(ev[0]), str(ev[1])
            codes = self.codes.get(item_id)
            if codes is None:
                raise UnknownItemError(f"unknown item id {item_id!r} in the history")
            out.append(HistoryEvent(codes, action, self.titles.get(item_id)))
        return out

    def history_item_ids(self, history: HistoryLike) -> list[str]:
        ids = []
        for ev in history:
            if isinstance(ev, HistoryEvent):
                idx = self.core.trie.item_index(self.token_map.sid_ids(ev.codes))
                if idx is not None:
                    ids.append(str(self.core.trie.item_ids[idx]))
            elif isinstance(ev, Mapping):
                ids.append(str(ev["item_id"]))
            else:
                ids.append(str(ev[0]))
        return ids

    def prompt_ids(self, messages: Sequence[Mapping[str, str]], suffix_ids: Sequence[int] = ()) -> list[int]:
        from chatrec.conversation import prompt_ids

        return prompt_ids(self.engine.tokenizer, messages, suffix_ids=suffix_ids)

    def window(self, history: HistoryLike) -> tuple[list[HistoryEvent], str | None]:
        """The most recent `history_len` events, plus the taste summary when older ones are cut
        (the same window `chatrec data build` trains on)."""
        events = self.events(history)
        if len(events) <= self.history_len:
            return events, None
        by_codes = {codes: item_id for item_id, codes in self.codes.items()}
        summary = taste_summary([(*self.meta.get(by_codes.get(ev.codes, ""), ((), None)), ev.action) for ev in events],
                                positive_actions=self.positive_actions, negative_actions=self.negative_actions,
                                word=self.domain.word,
                                max_words=self.summary_words)
        return events[-self.history_len:], summary

    def retrieval_prompt(self, history: HistoryLike, request: str | None = None) -> list[int]:
        """Without a request and with a history: the plain sequence prompt (the last events, then the
        positive action), exactly what sequence training saw. Otherwise the chat prompt + `<|sid_begin|>`."""
        if request is None and history:
            events = self.events(history)[-self.sequence_events:]
            if self.trim_history:  # end one token past a whole KV block: vLLM's beams reuse the whole prompt
                events = events[len(events) - block_trimmed(len(events), self.per_event):]
            text = sequence_prompt(events, self.positive_actions[0])
            # no padding or other filler: every engine must see the tokens training saw, or the served
            # ranking drifts from the evaluated one (left-padding to whole KV blocks did, by a third)
            return [int(i) for i in self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]]
        events, summary = self.window(history)
        if request is not None:  # a person's words: special tokens typed in them stay text
            request = escape_special_tokens(request, self.engine.tokenizer)
        return self.prompt_ids(next_item_messages(events, request, summary=summary, domain=self.domain),
                               [self.token_map.sid_begin])

    def event_prompt(self, history: HistoryLike) -> list[int]:
        """The events reading's prompt: one `<|ev_ACTION_i|>` token per event the model knows, the last
        `max_len` of them (an item or action added after training has no token and is left out)."""
        ev = self.token_map.events
        assert ev is not None
        first, n = int(ev["first"]), len(ev["item_ids"])
        ids = self.history_item_ids(history)
        actions = [e.action for e in self.events(history)]
        out = [first + self.event_actions[a] * n + self.event_items[i] for i, a in zip(ids, actions, strict=True)
               if i in self.event_items and a in self.event_actions]
        return out[-int(ev.get("max_len", 200)):]

    def _recommend_events(self, prompt: list[int], k: int, allowed: np.ndarray | None) -> list[Recommendation]:
        """Top-`k` allowed items by the log-probability of the positive action's event token after
        `prompt`, plus that action's per-item bias (finetune.events)."""
        assert self.event_bias is not None and self.token_map.events is not None
        action = next((a for a in self.positive_actions if a in self.event_actions),
                      next(iter(self.event_actions)))
        ids = self.token_map.event_ids(action)
        scorer = getattr(self.engine, "next_token_scores", None) or self.engine.next_token_logprobs
        scores = np.asarray(scorer(prompt, [[]], ids.tolist()), dtype=np.float64)[0]
        scores = scores + self.event_bias[self.event_actions[action]]
        ok = self.event_trie_index >= 0
        if allowed is not None:
            ok &= allowed[np.maximum(self.event_trie_index, 0)]
        top = top_k_from_scores(scores[None], k, ~ok[None])[0]
        return [self.item(int(self.event_trie_index[t]), float(scores[t])) for t in top if t >= 0]

    def item(self, index: int, score: float) -> Recommendation:
        item_id = str(self.core.trie.item_ids[index])
        codes = self.codes.get(item_id, ())
        return Recommendation(item_id, self.titles.get(item_id, item_id), sid_string(codes), float(score))

    # retrieval and ranking ---------------------------------------------------------------------
    def allowed(self, exclude_item_ids: Sequence[str] = (), categories: Sequence[str] | None = None,
                include_item_ids: Sequence[str] | None = None) -> np.ndarray | None:
        return self.core.allowed_items(exclude_item_ids, categories, include_item_ids)

    def recommend(self, history: HistoryLike, k: int = 10, request: str | None = None,
                  exclude_item_ids: Sequence[str] = (), categories: Sequence[str] | None = None,
                  *, exclude_history: bool = True, beam_width: int | None = None,
                  include_item_ids: Sequence[str] | None = None) -> list[Recommendation]:
        """Top-`k` distinct catalog items for `history` (+ an optional text request).

        Items in the history are left out unless `exclude_history=False`; `categories` keeps
        only items with one of them, `include_item_ids` only those items. Raises `FilterError`
        when no item qualifies.
        """
        if k < 1:
            raise ConfigError(f"`k` must be >= 1, got {k}")
        exclude = list(exclude_item_ids) + (self.history_item_ids(history) if exclude_history else [])
        allowed = self.allowed(exclude, categories, include_item_ids)
        if request is None and history and self.event_bias is not None:
            prompt = self.event_prompt(history)
            if prompt:
                self.limits.check("prompt tokens", len(prompt), "max_prompt_tokens")
                return self._recommend_events(prompt, k, allowed)
        prompt = self.retrieval_prompt(history, request)
        width = beam_width or max(2 * k, 10)
        self.limits.check("prompt tokens", len(prompt), "max_prompt_tokens")
        self.limits.check(f"{width} beams x {len(prompt) + self.core.trie.depth} tokens",
                          width * (len(prompt) + self.core.trie.depth), "max_beam_tokens")
        config = RetrievalConfig(k=k, beam_width=width, search=self.search, last_level=self.last_level,
                                 prior_exponent=self.prior_exponent)
        # renormalised search needs each beam's children up to a constant: an engine that can
        # compute the output head over those rows only (transformers) skips the full vocabulary
        scores = getattr(self.engine, "next_token_scores", None) if config.renormalize else None
        found = top_k(scores or self.engine.next_token_logprobs, prompt, self.core.trie, config, allowed)
        return [self.item(s.index, s.score) for s in found]

    def rank(self, history: HistoryLike, candidate_item_ids: Sequence[str],
             value_fn: Callable[[Mapping[str, float]], float] | str | None = None) -> list[RankedItem]:
        """Candidates ordered by a value of P(action | history, item), e.g. P(like) - 10 P(dislike)."""
        if isinstance(value_fn, str):
            value_fn = ValueFunction.parse(value_fn)
        events, _ = self.window(history)  # the action task trains on this window, no summary
        prompts = []
        for item_id in candidate_item_ids:
            codes = self.codes.get(str(item_id))
            if codes is None:
                raise UnknownItemError(f"unknown candidate item id {item_id!r}")
            prompts.append(self.prompt_ids(action_messages(events, codes, domain=self.domain)))
            self.limits.check("prompt tokens", len(prompts[-1]), "max_prompt_tokens")
            self.limits.check(f"{len(candidate_item_ids)} candidates x prompt tokens",
                              len(prompts[-1]) * len(candidate_item_ids), "max_rank_tokens")
        if not self.token_map.actions:
            raise FilterError("the model has no action tokens to rank with")
        return rank(self.engine.next_token_logprobs, prompts, [str(i) for i in candidate_item_ids],
                    self.token_map.actions, value_fn)
