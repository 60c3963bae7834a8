"""Offline evaluation: the leave-last-out split, systems side by side, eval.json, table and plot.

Protocol (`leave_last_out`, the same split `chatrec data build` trains on): per user, events in time
order; the last *positive* event (action in `target_actions`, default `like`) is the test target and
the last positive strictly before its timestamp the validation target. A case's input is every
event of that user strictly before its target's timestamp (ties excluded). Training data holds each
user's events strictly before the validation target. Every system ranks the whole catalog (no
sampled negatives), with the items in the input excluded, and is scored on the same users.

`--protocol last-item` (`leave_last_item_out`) is the published one instead: each user's last
event whatever its action is the test target, the one before it the validation target, the input
every event before the target.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from chatrec import metrics
from chatrec.baselines import BASELINES, ItemKNNConfig, SASRecConfig
from chatrec.bundle import Bundle, atomic_path, atomic_write_json, atomic_write_text
from chatrec.errors import ConfigError, DataError
from chatrec.retrieval import LAST_LEVELS, SERVED_LAST_LEVEL

DEFAULT_SYSTEMS = ("random", "popularity", "itemknn", "sasrec")
CORE_METRICS = ("mrr", "coverage", "invalid_rate", "seen_rate", "latency_ms_per_user")


# split ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One held-out prediction: a user's input events (oldest first) and the target that followed."""

    user_id: str
    items: tuple[str, ...]
    actions: tuple[str, ...]
    times: tuple[pd.Timestamp, ...]
    target: str
    target_action: str
    time: pd.Timestamp


@dataclass
class Split:
    """Training rows plus validation and test cases; `cutoffs[user]` = first time not trained on."""

    train: pd.DataFrame
    valid: list[Case]
    test: list[Case]
    cutoffs: dict[str, pd.Timestamp | None]
    description: dict[str, Any]


def leave_last_out(
    interactions: pd.DataFrame,
    *,
    target_actions: Sequence[str] = ("like",),
    known_items: Sequence[str] | None = None,
    min_history: int = 1,
) -> Split:
    """Split a log per user: last positive = test target, the positive before it = validation target.

    Mirrors `finetune.data.ConversationBuilder.build`: when no event has an action in
    `target_actions`, every action counts as positive; the test target is the user's last positive
    and the validation target the last positive strictly before its timestamp (positives tied with
    the test target are skipped). A user is held out only when both exist and at least
    `min_history` events precede the validation target; otherwise all of their events train. Cases whose target item already
    appears in their own input are dropped (counted in the description), so no target is ever
    in its user's input. Events of items outside `known_items` are ignored.
    """
    df = _time_ordered(interactions, known_items, min_history)
    present = set(df["action"].astype(str))
    positive = tuple(a for a in target_actions if a in present) or tuple(sorted(present))
    is_pos = df["action"].astype(str).isin(positive).to_numpy()
    users = df["user_id"].astype(str).to_numpy()
    items = df["item_id"].astype(str).to_numpy()
    actions = df["action"].astype(str).to_numpy()
    stamps = pd.DatetimeIndex(df["timestamp"])
    times_ns = stamps.asi8

    keep = np.ones(len(df), dtype=bool)
    valid: list[Case] = []
    test: list[Case] = []
    cutoffs: dict[str, pd.Timestamp | None] = {}
    dropped_repeat = 0
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        user = str(users[start])
        pos = np.flatnonzero(is_pos[start:end]) + start
        cutoffs[user] = None
        t = int(pos[-1]) if len(pos) else -1
        earlier = pos[times_ns[pos] < times_ns[t]] if len(pos) else pos
        if not len(earlier):
            continue  # no two positives at different times: all of this user's events train
        v = int(earlier[-1])
        cutoffs[user] = stamps[v]
        keep[start:end] = times_ns[start:end] < times_ns[v]
        user_times = times_ns[start:end].tolist()
        n_before_v = bisect.bisect_left(user_times, times_ns[v])
        if n_before_v < min_history:
            continue
        for row, out in ((v, valid), (t, test)):
            n = bisect.bisect_left(user_times, times_ns[row])
            hist = slice(start, start + n)
            if items[row] in set(items[hist]):
                dropped_repeat += 1
                continue
            out.append(Case(user, tuple(items[hist]), tuple(actions[hist]), tuple(stamps[hist]),
                            str(items[row]), str(actions[row]), stamps[row]))
    train = df[keep].reset_index(drop=True)
    description = {
        "method": "leave-last-out, time-ordered, per user",
        "target": f"the user's last event with action in {list(positive)}; validation: the last such event "
                  "strictly before the test target's timestamp",
        "input": "all of the user's events (every action) strictly before the target's timestamp",
        "train": "each held-out user's events strictly before the validation target; all events of users "
                 "with fewer than two positives",
        "ranking": "full catalog, no sampled negatives; items in the user's input are excluded",
        "positive_actions": list(positive),
        "min_history": min_history,
        "users": len(cutoffs),
        "test_users": len(test),
        "valid_users": len(valid),
        "train_interactions": int(len(train)),
        "dropped_repeat_targets": dropped_repeat,
    }
    return Split(train, valid, test, cutoffs, description)


# the published protocol ------------------------------------------------------------------------
PROTOCOLS = ("liked", "last-item")


def _time_ordered(interactions: pd.DataFrame, known_items: Sequence[str] | None, min_history: int) -> pd.DataFrame:
    """The log's known-item rows sorted by (user, time), ties in log order; raises on an unusable log."""
    for col in ("user_id", "item_id", "action", "timestamp"):
        if col not in interactions.columns:
            raise DataError(f"interactions lack the column {col!r} (have: {', '.join(map(str, interactions.columns))})")
    if min_history < 1:
        raise ConfigError(f"`min_history` must be >= 1, got {min_history}")
    df = interactions
    if known_items is not None:
        df = df[df["item_id"].astype(str).isin(set(map(str, known_items)))]
    if df.empty:
        raise DataError("no interactions left to split (empty log, or no item of it is in the catalog)")
    return df.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def leave_last_item_out(
    interactions: pd.DataFrame,
    *,
    known_items: Sequence[str] | None = None,
    min_history: int = 1,
) -> Split:
    """Split a log per user as the SASRec, BERT4Rec and HSTU papers do: the last event is the test target.

    Per user, events in time order (ties keep the log's order: the bundle's stable sort, i.e. file
    order). The last event, whatever its action, is the test target and every event before it
    the input; the event before it is the validation target, its input every event before it;
    training holds the events before the validation target. A user is held out when at least
    `min_history` events precede the validation target; otherwise all of their events train. A
    target already in its own input is dropped (counted), since every system ranks the catalog
    without the input's items. `cutoffs[user]` is the validation target's time.
    """
    df = _time_ordered(interactions, known_items, min_history)
    users = df["user_id"].astype(str).to_numpy()
    items = df["item_id"].astype(str).to_numpy()
    actions = df["action"].astype(str).to_numpy()
    stamps = pd.DatetimeIndex(df["timestamp"])
    keep = np.ones(len(df), dtype=bool)
    valid: list[Case] = []
    test: list[Case] = []
    cutoffs: dict[str, pd.Timestamp | None] = {}
    dropped_repeat = 0
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        user = str(users[start])
        cutoffs[user] = None
        if end - start < min_history + 2:
            continue  # too short to hold out two targets: all of this user's events train
        v, t = int(end - 2), int(end - 1)
        cutoffs[user] = stamps[v]
        keep[v:end] = False
        for row, out in ((v, valid), (t, test)):
            if items[row] in set(items[start:row]):
                dropped_repeat += 1
                continue
            out.append(Case(user, tuple(items[start:row]), tuple(actions[start:row]), tuple(stamps[start:row]),
                            str(items[row]), str(actions[row]), stamps[row]))
    train = df[keep].reset_index(drop=True)
    description = {
        "method": "leave-last-item-out, time-ordered, per user (as in the SASRec, BERT4Rec and HSTU papers)",
        "protocol": "last-item",
        "target": "the user's last event, whatever its action; validation: the event before it",
        "input": "all of the user's events before the target (same-second ties in log order)",
        "train": "each held-out user's events before the validation target; all events of users with fewer "
                 f"than {min_history + 2} events",
        "ranking": "full catalog, no sampled negatives; items in the user's input are excluded",
        "positive_actions": sorted(set(actions)),
        "min_history": min_history,
        "users": len(cutoffs),
        "test_users": len(test),
        "valid_users": len(valid),
        "train_interactions": int(len(train)),
        "dropped_repeat_targets": dropped_repeat,
    }
    return Split(train, valid, test, cutoffs, description)


TRAINED_PROTOCOL = "liked"  # the split `chatrec data build` trains the LLM on


def drop_trained_targets(split: Split, trained: pd.DataFrame, why: str) -> Split:
    """`split` without the held-out cases whose (user, target item) is a row of `trained`.

    A model trained on another protocol's split may have seen some of this split's targets (on
    ML-1M, 4 of the last-item protocol's test targets are training rows of the liked split: users
    with fewer than two liked events train on every event). Every system is then scored on the
    remaining cases alone, so the comparison stays paired; the counts go into the description."""
    seen = set(zip(trained["user_id"].astype(str), trained["item_id"].astype(str), strict=True))
    test = [c for c in split.test if (c.user_id, c.target) not in seen]
    valid = [c for c in split.valid if (c.user_id, c.target) not in seen]
    dropped = {"test": len(split.test) - len(test), "valid": len(split.valid) - len(valid), "why": why}
    return replace(split, test=test, valid=valid, description={**split.description, "dropped_trained_targets": dropped})


def make_split(interactions: pd.DataFrame, protocol: str, *, target_actions: Sequence[str] = ("like",),
               known_items: Sequence[str] | None = None) -> Split:
    """The split `protocol` names: `liked` (`leave_last_out`) or `last-item` (`leave_last_item_out`)."""
    if protocol == "last-item":
        return leave_last_item_out(interactions, known_items=known_items)
    if protocol == "liked":
        return leave_last_out(interactions, target_actions=target_actions, known_items=known_items)
    raise ConfigError(f"`protocol` must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


# systems -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Constraint:
    """A checkable text request: "a comedy" (category) or "from the 80s" (year range)."""

    text: str
    category: str | None = None
    years: tuple[int, int] | None = None  # [start, end)

    def satisfied(self, info: ItemMeta) -> bool:
        if self.category is not None and self.category not in info.categories:
            return False
        return not (self.years is not None and (info.year is None or not self.years[0] <= info.year < self.years[1]))


@dataclass(frozen=True)
class ItemMeta:
    categories: frozenset[str]
    year: int | None


class Catalog:
    """Catalog item ids <-> indices, plus what request constraints are checked against."""

    def __init__(self, frame: pd.DataFrame):
        if "item_id" not in frame.columns:
            raise DataError("catalog lacks the column 'item_id'")
        self.ids: list[str] = frame["item_id"].astype(str).tolist()
        self.index = {item: i for i, item in enumerate(self.ids)}
        cats = frame["categories"] if "categories" in frame.columns else pd.Series([[]] * len(frame))
        years = frame["year"] if "year" in frame.columns else pd.Series([None] * len(frame))
        self.meta: list[ItemMeta] = [
            ItemMeta(frozenset(str(c) for c in (list(cs) if cs is not None else [])),
                     None if y is None or pd.isna(y) else int(y))
            for cs, y in zip(cats, years, strict=True)
        ]
        self.titles = frame["title"].astype(str).tolist() if "title" in frame.columns else self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def indices(self, item_ids: Sequence[str]) -> list[int]:
        return [self.index[i] for i in item_ids if i in self.index]


class System(Protocol):
    """What the runner needs from a system: fit once, then top-k item ids per case."""

    name: str

    def fit(self, split: Split, catalog: Catalog) -> dict[str, Any]: ...

    def recommend(self, cases: Sequence[Case], k: int, constraints: Sequence[Constraint] | None = None
                  ) -> list[list[str]]: ...


class BaselineSystem:
    """A `chatrec.baselines` model behind the `System` interface (item ids in, item ids out).

    With `constraints`, the baseline cannot read the request, so it answers as without one; use
    `filtered=True` for the structured-filter reference (items violating the constraint masked).
    """

    def __init__(self, name: str, seed: int = 0, progress: bool = True, **configs: Any):
        from chatrec.baselines import make_baseline

        self.name = name
        self.model = make_baseline(name, seed=seed, progress=progress, **configs)
        self.catalog: Catalog | None = None

    def fit(self, split: Split, catalog: Catalog) -> dict[str, Any]:
        self.catalog = catalog
        sequences = [catalog.indices(g.tolist()) for _, g in split.train.groupby("user_id", sort=True)["item_id"]]
        valid = ([catalog.indices(c.items) for c in split.valid], [catalog.index[c.target] for c in split.valid])
        self.model.fit(sequences, len(catalog), valid=valid if split.valid else None)
        info: dict[str, Any] = {"config": self.model.config()}
        history: list[dict[str, float]] = getattr(self.model, "history", [])
        checks = [h for h in history if "valid_ndcg@10" in h]
        if checks:
            best = max(checks, key=lambda h: h["valid_ndcg@10"])
            info.update(epochs_run=int(history[-1]["epoch"]), best_epoch=int(best["epoch"]),
                        best_valid_ndcg10=best["valid_ndcg@10"],
                        valid_curve=[[int(h["epoch"]), round(h["valid_ndcg@10"], 5)] for h in checks])
        return info

    def recommend(self, cases: Sequence[Case], k: int, constraints: Sequence[Constraint] | None = None,
                  *, filtered: bool = False, batch_size: int = 256) -> list[list[str]]:
        catalog = self.catalog
        if catalog is None:
            raise ConfigError(f"{self.name}: fit() must run before recommend()")
        out: list[list[str]] = []
        for start in range(0, len(cases), batch_size):
            chunk = cases[start:start + batch_size]
            histories = [catalog.indices(c.items) for c in chunk]
            excludes = [set(h) for h in histories]
            if filtered and constraints is not None:
                for row, con in enumerate(constraints[start:start + batch_size]):
                    excludes[row] |= {i for i, m in enumerate(catalog.meta) if not con.satisfied(m)}
            recs = self.model.recommend_batch(histories, k, excludes)
            out.extend([catalog.ids[i] for i in row] for row in recs)
        return out


class LLMSystem:
    """The bundle's finetuned LLM through `chatrec.recommender.Recommender` (constrained top-K)."""

    def __init__(self, name: str, bundle: Bundle, engine: str = "auto", history_len: int | None = None,
                 model_dir: str | None = None, last_level: str = SERVED_LAST_LEVEL, trim_history: bool = True):
        self.name = name
        self.trim_history = trim_history
        self.model_dir = model_dir
        self.last_level = last_level
        self.bundle = bundle
        self.engine = engine
        self.history_len = history_len
        self.rec: Any = None
        self.conversation: Any = None
        self.train: Any = None

    def fit(self, split: Split, catalog: Catalog) -> dict[str, Any]:
        # the served path itself: `chatrec serve`'s engine (auto: vLLM when installed), engine
        # settings, search and limits, so this number is the one the default server returns
        from serve.service import ServeConfig, served_recommender

        served = ServeConfig(bundle=str(self.bundle.root), engine=self.engine, last_level=self.last_level,
                             trim_history=self.trim_history)
        self.rec = served_recommender(served, model_dir=self.model_dir)
        # co-occurrence for requests, from the training rows only: no held-out target
        self.train = split.train[["user_id", "item_id", "action"]] if split is not None else None
        trained = (self.bundle.stage("finetune") or {}).get("counts", {})
        info = {"engine": served.engine, "search": served.search, "last_level": self.last_level,
                "trim_history": self.trim_history,
                "bundle": str(self.bundle.root),
                "history_len": self.history_len,
                "model_dir": str(self.rec.model_dir)}
        for key in ("recipe", "train_minutes", "layers", "steps", "epochs_seen", "averaged_steps"):
            if key in trained:
                info[key] = trained[key]
        snapshot = (self.bundle.stage("finetune") or {}).get("snapshots", {}).get(Path(self.model_dir or "").name)
        if snapshot:  # a learning-curve snapshot: its own training time
            info.update(train_minutes=snapshot["minutes"], steps=snapshot["step"])
            info.pop("epochs_seen", None)
            info.pop("averaged_steps", None)
        return info

    def recommend(self, cases: Sequence[Case], k: int, constraints: Sequence[Constraint] | None = None
                  ) -> list[list[str]]:
        from tqdm.auto import tqdm

        from chatrec.dialogue import model_retrieve

        retrieve = model_retrieve(self.rec)
        out = []
        for row, case in enumerate(tqdm(cases, desc=self.name, leave=False)):
            history = list(zip(case.items, case.actions, strict=True))
            if self.history_len is not None:
                history = history[-self.history_len:]  # the prompt length it was trained on; all input items stay excluded
            if constraints is not None:  # words: read as `/v1/recommendations` reads a `request`
                picked = self._conversation().request_items(constraints[row].text, retrieve, k=k,
                                                            history=history, exclude_item_ids=list(case.items))
                if picked is not None:
                    ids = self._conversation().index.ids
                    out.append([ids[i] for i, _ in picked])
                    continue
            request = constraints[row].text if constraints is not None else None
            recs = self.rec.recommend(history, k, request=request, exclude_item_ids=set(case.items))
            out.append([str(getattr(r, "item_id", r)) for r in recs])
        return out

    def _conversation(self) -> Any:
        if self.conversation is None:
            from chatrec.dialogue import Conversation

            self.conversation = Conversation.for_recommender(self.rec, interactions=self.train)
        return self.conversation

    def close(self) -> None:
        if self.rec is not None:
            self.rec.close()
            self.rec = None


# conversational requests -----------------------------------------------------------------------
def make_constraints(cases: Sequence[Case], catalog: Catalog, seed: int = 0) -> list[Constraint | None]:
    """One checkable request per case that its target satisfies (a genre or a decade), seeded.

    Phrased like the text requests `chatrec data build` trains on.
    """
    rng = np.random.default_rng(seed)
    out: list[Constraint | None] = []
    for case in cases:
        meta = catalog.meta[catalog.index[case.target]]
        options: list[Constraint] = []
        cats = sorted(c for c in meta.categories if c.lower() != "unknown")
        if cats:
            cat = cats[int(rng.integers(len(cats)))]
            options.append(Constraint(f"I'm in the mood for a {cat.lower()} film.", category=cat))
        if meta.year is not None:
            decade = meta.year // 10 * 10
            words = f"{decade % 100:02d}s" if 1900 <= decade < 2000 else f"{decade}s"
            options.append(Constraint(f"Something from the {words}, please.", years=(decade, decade + 10)))
        out.append(options[int(rng.integers(len(options)))] if options else None)
    return out


# stated titles ---------------------------------------------------------------------------------
def stated_cases(cases: Sequence[Case], n: int, target_actions: Sequence[str] = ("like",)) -> list[Case]:
    """The stated-titles protocol: each case cut to the `n` most recent distinct items of its input
    with a target action (oldest first), as a person names a few favourites in a chat; the target
    stays. Cases with fewer such items are left out."""
    out = []
    for case in cases:
        latest: dict[str, tuple[str, pd.Timestamp]] = {}
        for item, action, when in zip(reversed(case.items), reversed(case.actions), reversed(case.times), strict=True):
            if action in target_actions and item not in latest:
                latest[item] = (action, when)
                if len(latest) == n:
                    break
        if len(latest) < n:
            continue
        kept = list(latest.items())[::-1]
        out.append(replace(case, items=tuple(i for i, _ in kept), actions=tuple(a for _, (a, _) in kept),
                           times=tuple(t for _, (_, t) in kept)))
    return out


def _stated(system: Any, cases: Sequence[Case], n: int, k: int) -> dict[str, float]:
    """HR/NDCG@10 from `n` stated titles only (those excluded). A system with `recommend_stated`
    (the chat) is told the titles in words and returns how often it understood all of them."""
    if not cases:
        return {}
    understood: float | None = None
    if hasattr(system, "recommend_stated"):
        recs, understood = system.recommend_stated(cases, k)
    else:
        recs = system.recommend(cases, k)
    ranks = target_ranks(recs, cases, k)
    out = {f"stated{n}_users": len(cases), f"stated{n}_hr@10": metrics.hit_rate(ranks, 10),
           f"stated{n}_ndcg@10": metrics.ndcg(ranks, 10)}
    if understood is not None:
        out[f"stated{n}_understood"] = understood
    return out


# runner ----------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    systems: tuple[str, ...] = field(default=DEFAULT_SYSTEMS, metadata={
        "help": "Systems to compare: random, popularity, itemknn, sasrec, llm (any name starting with `llm`), and "
                "chat (any name starting with `chat`: the served chat turn, chatrec.chat_eval)."})
    ks: tuple[int, ...] = field(default=(1, 5, 10, 20), metadata={"help": "Cut-offs K for HR@K and NDCG@K (each >= 1)."})
    max_users: int | None = field(default=None, metadata={
        "help": "Evaluate a seeded sample of this many test users (all systems on the same users); None = all."})
    seed: int = field(default=0, metadata={"help": "Seed for user sampling, request phrasing and model training."})
    target_actions: tuple[str, ...] = field(default=("like",), metadata={
        "help": "Actions that count as a positive target (all actions when none of them occurs in the log)."})
    protocol: str = field(default="liked", metadata={
        "help": "Split: liked (target = each user's last event with a target action, input = events strictly "
                "before its time) or last-item (target = each user's last event whatever its action, input = "
                "every event before it, as in the SASRec/BERT4Rec/HSTU papers)."})
    conversational: bool = field(default=True, metadata={
        "help": "Also score text requests with a checkable constraint (a genre or a decade)."})
    engine: str = field(default="auto", metadata={
        "help": "Engine for llm systems, as `chatrec serve --engine` takes it: auto (vllm when installed, the "
                "engine `chatrec serve` and `chatrec demo` serve), vllm or transformers."})
    llm_history_len: int | None = field(default=None, metadata={
        "help": "Most recent input events given to the LLM; every input item is still excluded from its answer. "
                "None = the whole input (the recommender then keeps what its prompts were trained on: one "
                "sequence window, or `history_len` events in chat prompts)."})
    last_level: str = field(default=SERVED_LAST_LEVEL, metadata={
        "help": "LLM retrieval on the SID's last (disambiguation) level: prior (no model call, as served) or model."})
    trim_history: bool = field(default=True, metadata={
        "help": "LLM plain recommendations: drop up to an eighth of the oldest history events so the prompt ends "
                "one token past a whole KV block (chatrec.prompts.block_trimmed; `chatrec serve`'s default)."})
    cases: str = field(default="test", metadata={
        "help": "Held-out cases to score: test, or valid (the target before each test target; its input and the "
                "training rows stop before it). Choose settings on valid, report test once."})
    stated_titles: tuple[int, ...] = field(default=(1, 3), metadata={
        "help": "Also score each system from only the N most recent liked input items (a person naming N titles in "
                "a chat; the chat system is told them in words), for each N; empty = skip."})
    llm_model_dir: str | None = field(default=None, metadata={
        "help": "Model folder for llm systems (default: BUNDLE/export, else BUNDLE/model), e.g. a training snapshot."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    itemknn: ItemKNNConfig = field(default_factory=ItemKNNConfig, metadata={"help": "Item-kNN hyper-parameters."})
    sasrec: SASRecConfig = field(default_factory=SASRecConfig, metadata={
        "help": "SASRec hyper-parameters (its seed is replaced by `seed`)."})

    def __post_init__(self) -> None:
        self.systems = tuple(self.systems)
        self.ks = tuple(sorted(set(self.ks)))
        self.stated_titles = tuple(sorted(set(self.stated_titles)))
        if not self.systems:
            raise ConfigError("`systems` must name at least one system, got none")
        for name in self.systems:
            if name not in BASELINES and not name.startswith(("llm", "chat")):
                raise ConfigError(f"`systems`: unknown system {name!r}; allowed: {', '.join(BASELINES)}, llm*, chat*")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"`ks` must be positive integers, got {list(self.ks)}")
        if any(n < 1 for n in self.stated_titles):
            raise ConfigError(f"`stated_titles` must be positive integers, got {list(self.stated_titles)}")
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(f"`max_users` must be >= 1 or None, got {self.max_users}")
        if self.llm_history_len is not None and self.llm_history_len < 1:
            raise ConfigError(f"`llm_history_len` must be >= 1 or None, got {self.llm_history_len}")
        if self.engine not in ("auto", "transformers", "vllm"):
            raise ConfigError(f"`engine` must be auto, transformers or vllm, got {self.engine!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"`protocol` must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.last_level not in LAST_LEVELS:
            raise ConfigError(f"`last_level` must be one of {', '.join(LAST_LEVELS)}, got {self.last_level!r}")
        if self.cases not in ("test", "valid"):
            raise ConfigError(f"`cases` must be test or valid, got {self.cases!r}")


def _stem(config: EvalConfig) -> str:
    """The suffix of the files `evaluate_bundle` writes: none for test cases, `_valid` for validation."""
    return "" if config.cases == "test" else "_valid"


def eval_file(config: EvalConfig) -> str:
    """Where `evaluate_bundle` writes its results in the bundle: eval.json, or eval_valid.json."""
    return f"eval{_stem(config)}.json"


def sample_cases(cases: Sequence[Case], max_users: int | None, seed: int) -> list[Case]:
    """A seeded sample of `max_users` cases (order kept), or all of them."""
    if max_users is None or len(cases) <= max_users:
        return list(cases)
    keep = np.sort(np.random.default_rng(seed).choice(len(cases), size=max_users, replace=False))
    return [cases[i] for i in keep]


def target_ranks(recs: Sequence[Sequence[str]], cases: Sequence[Case], k: int) -> list[int | None]:
    """Each case's target rank (0-based) in its top-`k` list, or None when it is not there."""
    return [metrics.target_rank(r[:k], c.target) for r, c in zip(recs, cases, strict=True)]


def score_lists(recs: Sequence[Sequence[str]], cases: Sequence[Case], catalog: Catalog, ks: Sequence[int]
                ) -> dict[str, float]:
    """HR@K, NDCG@K, MRR (truncated at max K), coverage, invalid and seen-item rates of top-K lists."""
    kmax = max(ks)
    ranks = target_ranks(recs, cases, kmax)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = metrics.hit_rate(ranks, k)
        out[f"ndcg@{k}"] = metrics.ndcg(ranks, k)
    out["mrr"] = metrics.mrr(ranks, kmax)
    ids = set(catalog.ids)
    out["coverage"] = metrics.coverage(recs, ids, kmax)
    out["invalid_rate"] = metrics.invalid_rate(recs, ids)
    seen = [[i for i in r if i in set(c.items)] for r, c in zip(recs, cases, strict=True)]
    returned = sum(len(r) for r in recs)
    out["seen_rate"] = sum(len(s) for s in seen) / returned if returned else 0.0
    return out


def _conversational(system: Any, cases: Sequence[Case], plain: Sequence[Sequence[str]], catalog: Catalog,
                    constraints: Sequence[Constraint | None], ks: Sequence[int]) -> dict[str, float]:
    """Constraint satisfaction and HR/NDCG when a request is combined with the history."""
    pairs = [(c, con, p) for c, con, p in zip(cases, constraints, plain, strict=True) if con is not None]
    if not pairs:
        return {}
    sub_cases = [p[0] for p in pairs]
    cons = [p[1] for p in pairs]
    kmax = max(ks)
    if isinstance(system, BaselineSystem):
        answered = [list(p[2]) for p in pairs]  # a baseline cannot read the request
        filtered = system.recommend(sub_cases, kmax, cons, filtered=True)
    else:
        answered = system.recommend(sub_cases, kmax, cons)
        filtered = None
    def meets(con: Constraint) -> Callable[[Any], bool]:
        return lambda item: item in catalog.index and con.satisfied(catalog.meta[catalog.index[item]])

    preds = [meets(con) for con in cons]
    out: dict[str, float] = {}
    ranks = target_ranks(answered, sub_cases, kmax)
    for k in ks:
        out[f"conv_sat@{k}"] = metrics.satisfaction_rate(answered, preds, k)
        out[f"conv_hr@{k}"] = metrics.hit_rate(ranks, k)
    out["conv_ndcg@10"] = metrics.ndcg(ranks, 10)
    if filtered is not None:
        franks = target_ranks(filtered, sub_cases, kmax)
        for k in ks:
            out[f"conv_filter_hr@{k}"] = metrics.hit_rate(franks, k)
        out["conv_filter_ndcg@10"] = metrics.ndcg(franks, 10)
    return out


def make_system(name: str, bundle: Bundle | None, config: EvalConfig) -> Any:
    if name.startswith("chat"):  # the served chat turn (chatrec.chat_eval)
        from chatrec.chat_eval import ChatSystem

        if bundle is None:
            raise ConfigError(f"system {name!r} needs a bundle with a finetuned model")
        return ChatSystem(name, bundle, engine=config.engine, last_level=config.last_level,
                          trim_history=config.trim_history)
    if name.startswith("llm"):
        if bundle is None:
            raise ConfigError(f"system {name!r} needs a bundle with a finetuned model")
        return LLMSystem(name, bundle, engine=config.engine, history_len=config.llm_history_len,
                         model_dir=config.llm_model_dir, last_level=config.last_level,
                         trim_history=config.trim_history)
    return BaselineSystem(name, seed=config.seed, progress=config.progress, itemknn=config.itemknn,
                          sasrec=config.sasrec)


def run(split: Split, catalog: Catalog, config: EvalConfig, bundle: Bundle | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit and score every system on the same test users; returns the eval.json mapping."""
    cases = sample_cases(split.test if config.cases == "test" else split.valid, config.max_users, config.seed)
    if not cases:
        raise DataError(f"the split has no {config.cases} users (each needs two positives at different times and a history)")
    constraints = make_constraints(cases, catalog, config.seed) if config.conversational else []
    positive = set(config.target_actions)
    if not any(a in positive for c in cases for a in c.actions):  # as the split: every action is a positive
        positive = {a for c in cases for a in c.actions}
    stated = {n: stated_cases(cases, n, tuple(positive)) for n in config.stated_titles}
    kmax = max(config.ks)
    results: dict[str, Any] = {}
    fit_info: dict[str, Any] = {}
    for name in config.systems:
        system = make_system(name, bundle, config)
        t0 = time.perf_counter()
        fit_info[name] = system.fit(split, catalog)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        recs = system.recommend(cases, kmax)
        latency = (time.perf_counter() - t0) * 1000 / len(cases)
        scores = score_lists(recs, cases, catalog, config.ks)
        scores["latency_ms_per_user"] = latency
        scores["fit_s"] = fit_s
        scores["users"] = len(cases)
        for key in ("train_minutes", "engine", "search", "last_level", "trim_history"):  # the served path an LLM row was scored on
            if key in fit_info[name]:
                scores[key] = fit_info[name][key]
        if config.conversational:
            scores.update(_conversational(system, cases, recs, catalog, constraints, config.ks))
        for n, few in stated.items():
            scores.update(_stated(system, few, n, kmax))
        results[name] = scores
        close = getattr(system, "close", None)
        if close is not None:
            close()
        log(f"{name}: " + ", ".join(f"{k}={scores[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr") if k in scores))
    valid_cons = [c for c in constraints if c is not None]
    base = [np.mean([c.satisfied(m) for m in catalog.meta]) for c in valid_cons]
    results["split"] = {
        **split.description,
        "evaluated_users": len(cases),
        "cases": config.cases,
        "max_users": config.max_users,
        "seed": config.seed,
        "ks": list(config.ks),
        "catalog_items": len(catalog),
        "metrics": {
            "hr@K / ndcg@K": "one target per user; NDCG = 1/log2(rank+2) within the top K",
            "mrr": f"mean reciprocal rank within the top {kmax} (0 beyond)",
            "coverage": f"share of catalog items in at least one user's top {kmax}",
            "invalid_rate": "share of returned items that are not catalog items",
            "seen_rate": "share of returned items already in the user's input",
            "latency_ms_per_user": "wall time of recommend over all users / users (baselines score batches of 256)",
            "conv_*": "requests naming a genre or decade that the target satisfies; conv_sat = share of the top K "
                      "meeting it; baselines cannot read text and answer as without the request; "
                      "conv_filter_* = baseline with items violating the constraint masked (structured filter)",
            "stated<N>_*": "the same target from only the user's N most recent liked input items (those excluded); "
                           "the chat is told their titles in one message; stated<N>_understood = share of users "
                           "whose every title the chat linked",
        },
        "conversational_requests": len(valid_cons),
        "conv_base_rate": float(np.mean(base)) if base else None,
        "systems": fit_info,
    }
    return results


def split_for(inter: pd.DataFrame, catalog: Catalog, protocol: str, systems: Sequence[str],
              target_actions: Sequence[str] = ("like",), log: Callable[[str], None] = print) -> Split:
    """The `protocol` split the systems are scored on; with an LLM on another protocol than the one it
    trained on, without the cases whose target it trained on (`drop_trained_targets`)."""
    split = make_split(inter, protocol, target_actions=target_actions, known_items=catalog.ids)
    if protocol == TRAINED_PROTOCOL or not any(s.startswith(("llm", "chat")) for s in systems):
        return split
    trained = make_split(inter, TRAINED_PROTOCOL, known_items=catalog.ids).train
    split = drop_trained_targets(split, trained, f"the LLM trained on the {TRAINED_PROTOCOL} split's training rows, "
                                                 "which hold these targets")
    dropped = split.description["dropped_trained_targets"]
    if dropped["test"] or dropped["valid"]:
        log(f"dropped {dropped['test']} test and {dropped['valid']} validation cases whose target the LLM trained on "
            f"(the {TRAINED_PROTOCOL} split's training rows); every system is scored without them")
    return split


def evaluate_bundle(bundle: Bundle | str | Path, config: EvalConfig | None = None,
                    log: Callable[[str], None] = print, out: str | Path | None = None) -> dict[str, Any]:
    """`chatrec eval`: split the bundle's log, run every system, write eval.json, table and plot.

    With `out`, the results go to that JSON file only (the bundle's eval.json, table, plot and
    manifest stay as they are): for side runs that must not replace the bundle's evaluation."""
    config = config or EvalConfig()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    catalog_df = pd.read_parquet(bundle.require("catalog.parquet"))
    inter = pd.read_parquet(bundle.require("interactions.parquet"))
    catalog = Catalog(catalog_df)
    split = split_for(inter, catalog, config.protocol, config.systems, config.target_actions, log)
    results = run(split, catalog, config, bundle, log)
    if out is not None:
        atomic_write_json(Path(out), results)
        return results
    name, stem = eval_file(config), _stem(config)
    atomic_write_json(bundle.path(name), results)
    table = markdown_table(results, config.ks)
    atomic_write_text(bundle.path("eval", f"table{stem}.md"), table)
    plot(results, bundle.path("eval", f"metrics{stem}.png"), config.ks)
    bundle.record_stage(
        "eval" + stem.replace("_", "."), config=config,
        inputs={"catalog.parquet": bundle.catalog_path, "interactions.parquet": bundle.interactions_path},
        outputs={name: bundle.path(name), "table": bundle.path("eval", f"table{stem}.md"),
                 "plot": bundle.path("eval", f"metrics{stem}.png")},
        counts={"test_users": results["split"]["evaluated_users"], "systems": len(config.systems)},
    )
    return results


# report ----------------------------------------------------------------------------------------
def _systems(results: dict[str, Any]) -> list[str]:
    return [k for k in results if k != "split"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(results: dict[str, Any], ks: Sequence[int] = (1, 5, 10, 20)) -> str:
    """Systems side by side: ranking metrics, then (when present) the conversational ones."""
    cols = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1] + ["mrr", "coverage", "invalid_rate",
                                                                            "latency_ms_per_user"]
    names = _systems(results)
    lines = ["| system | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for n in names:
        label = f"{n} ({results[n]['engine']})" if "engine" in results[n] else n  # the engine that served it
        lines.append(f"| {label} | " + " | ".join(
            _fmt(results[n].get(c), 2 if c.startswith("latency") else 4) for c in cols) + " |")
    conv = [c for c in ("conv_sat@10", "conv_hr@10", "conv_ndcg@10", "conv_filter_hr@10", "conv_filter_ndcg@10")
            if any(c in results[n] for n in names)]
    if conv:
        lines += ["", "| system (text request + history) | " + " | ".join(conv) + " |", "|---|" + "---|" * len(conv)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(_fmt(results[n].get(c)) for c in conv) + " |")
    stated = sorted({int(c[6:c.index("_")]) for n in names for c in results[n]
                     if c.startswith("stated") and c.endswith("_ndcg@10")})
    if stated:
        cols = [f"stated{s}_{m}" for s in stated for m in ("ndcg@10", "hr@10", "understood")]
        heads = [f"{s} title{'s' * (s > 1)}: {m}" for s in stated for m in ("NDCG@10", "HR@10", "all understood")]
        lines += ["", "| system (stated titles only) | " + " | ".join(heads) + " |", "|---|" + "---|" * len(cols)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(_fmt(results[n].get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str | Path, ks: Sequence[int] = (1, 5, 10, 20)) -> Path:
    """Grouped bars of HR@K and NDCG@K per system (PNG, matplotlib Agg)."""
    from chatrec.deps import require

    require("matplotlib", "the eval plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _systems(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(ks))
    for ax, metric in zip(axes, ("hr", "ndcg"), strict=True):
        for j, name in enumerate(names):
            vals = [results[name].get(f"{metric}@{k}", 0.0) for k in ks]
            ax.bar(x + j * width - 0.4 + width / 2, vals, width, label=name)
        ax.set_xticks(x, [f"@{k}" for k in ks])
        ax.set_title(f"{metric.upper()}@K (full ranking, {results.get('split', {}).get('evaluated_users', '?')} users)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "Case", "Catalog", "Constraint", "EvalConfig", "Split", "BaselineSystem", "LLMSystem", "evaluate_bundle",
    "drop_trained_targets", "leave_last_item_out", "leave_last_out", "make_constraints", "make_split",
    "markdown_table", "plot", "run", "sample_cases", "score_lists", "split_for", "stated_cases",
]
