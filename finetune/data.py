"""Training conversations from catalog + interactions + SIDs (`chatrec data build`).

Point in time: a sample whose target happened at time t sees only the user's events with
timestamp < t (ties excluded). Per user, the last positive event is the test target and the one
before it the validation target (leave-last-out); every training sample of that user, of every
task, lies strictly before the validation target's time. For continual runs a global time cut
(`since`) keeps training targets at or after the cut and adds a `replay_fraction` of older ones.

Tasks (mixed by `task_weights`, read as examples per next-item example):
  next_item     history `SID ACTION ...` -> the next positive item's span (answered directly, so
                retrieval can start after the generation prompt + `<|sid_begin|>`)
  action        history + candidate -> its action token (what ranking reads)
  alignment     SID -> title/description, and title -> SID
  text_request  "a 90s comedy", "something like <title>" built from the target's metadata ->
                `<think>` trace + the item (a `request_think_fraction` share; the rest answer the
                span directly, like retrieval with a request)
  conversation  the user speaks in titles and words; the assistant reasons in `<think>` and
                recommends one to three items with explanations; a second turn asks about one

Besides the conversations, `sequences.jsonl` holds each user's training history as the compact
event string of `chatrec.prompts` (`ACTION CODES ACTION CODES ...`), cut into windows of at most
`window_tokens` tokens (the most recent window ends at the user's last training event; earlier
ones step back by `window_stride`). The sequence recipe puts the loss on every token of a window,
so one pass trains next-item retrieval and next-action prediction at every position.
`sequences_{valid,test}.jsonl` hold one row per held-out user: the window before the target, and it.

Prompts come from `chatrec.prompts`, so serving builds exactly the prompts trained on.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chatrec.bundle import Bundle, atomic_path
from chatrec.errors import ConfigError, DataError
from chatrec.prompts import (
    MOVIE,
    Domain,
    HistoryEvent,
    action_answer,
    action_messages,
    history_text,
    next_item_answer,
    next_item_messages,
    tokens_per_event,
)
from chatrec.tokens import sid_string
from finetune.teacher import Teacher, TeacherConfig
from finetune.traces import (
    ItemInfo,
    decade_words,
    explanation,
    gather_evidence,
    taste_summary,
    template_trace,
    wrap_think,
    year_from,
)

TASKS = ("next_item", "action", "alignment", "text_request", "conversation")
SPLITS = ("train", "valid", "test")


def _default_weights() -> dict[str, float]:
    return {"next_item": 1.0, "action": 0.5, "alignment": 0.2, "text_request": 0.2, "conversation": 0.2}


@dataclass
class BuildConfig:
    """How `chatrec data build` turns a bundle's logs into training conversations."""

    history_len: int = field(default=20, metadata={"help": "Most recent events shown in a prompt; older ones go into a one-line summary."})
    summary_max_words: int = field(default=24, metadata={"help": "Bound on the long-term taste summary, in words (~1.5 tokens each)."})
    positive_actions: tuple[str, ...] = field(default=("like",), metadata={"help": "Actions that make an item a next-item target (if the log has none of them, every event counts)."})
    negative_actions: tuple[str, ...] = field(default=("dislike",), metadata={"help": "Actions read as dislikes in traces and summaries."})
    task_weights: dict[str, float] = field(default_factory=_default_weights, metadata={"help": "Examples of each task per next-item training example (tasks: " + ", ".join(TASKS) + ")."})
    with_titles: bool = field(default=False, metadata={"help": "Write `(title)` after each SID in histories (serving must do the same)."})
    request_think_fraction: float = field(default=0.5, metadata={"help": "Share of text-request answers that reason in <think> first (the rest answer the span directly)."})
    max_users: int | None = field(default=None, metadata={"help": "Subsample this many users (seeded); None = all."})
    max_targets_per_user: int | None = field(default=None, metadata={"help": "Keep only each user's most recent N training targets per task; None = all."})
    since: str | None = field(default=None, metadata={"help": "Global time cut (ISO): training targets at/after it, valid/test only from it on (continual runs)."})
    replay_fraction: float = field(default=0.0, metadata={"help": "With `since`: older training samples kept, as a fraction of the new ones."})
    window_tokens: int = field(default=256, metadata={"help": "Tokens per training sequence window (an event costs 1 + levels + 1 tokens)."})
    window_stride: float = field(default=0.5, metadata={"help": "Step between a long user's windows, as a share of a window (0 < s <= 1)."})
    seed: int = field(default=0, metadata={"help": "Seed for subsampling, mixing and templates."})
    teacher: TeacherConfig = field(default_factory=TeacherConfig, metadata={"help": "Optional teacher LLM for trace wording."})

    def __post_init__(self) -> None:
        if isinstance(self.teacher, dict):
            self.teacher = TeacherConfig(**self.teacher)
        self.positive_actions = tuple(self.positive_actions)
        self.negative_actions = tuple(self.negative_actions)
        if self.history_len < 1:
            raise ConfigError(f"`history_len` must be >= 1, got {self.history_len}")
        if self.summary_max_words < 1:
            raise ConfigError(f"`summary_max_words` must be >= 1, got {self.summary_max_words}")
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise ConfigError(f"`task_weights` has unknown tasks {unknown}; allowed: {list(TASKS)}")
        bad = {k: v for k, v in self.task_weights.items() if not v >= 0}
        if bad:
            raise ConfigError(f"`task_weights` must be >= 0, got {bad}")
        if not 0.0 <= self.request_think_fraction <= 1.0:
            raise ConfigError(f"`request_think_fraction` must be in [0, 1], got {self.request_think_fraction}")
        if self.window_tokens < 1:
            raise ConfigError(f"`window_tokens` must be >= 1, got {self.window_tokens}")
        if not 0.0 < self.window_stride <= 1.0:
            raise ConfigError(f"`window_stride` must be in (0, 1], got {self.window_stride}")
        if not self.replay_fraction >= 0.0:
            raise ConfigError(f"`replay_fraction` must be >= 0, got {self.replay_fraction}")
        for name in ("max_users", "max_targets_per_user"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"`{name}` must be >= 1 or None, got {value}")
        if self.since is not None:
            try:
                pd.Timestamp(self.since)
            except (ValueError, TypeError):
                raise ConfigError(f"`since` must be an ISO timestamp, got {self.since!r}") from None

    @property
    def since_ts(self) -> pd.Timestamp | None:
        if self.since is None:
            return None
        ts = pd.Timestamp(self.since)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class Event:
    item_id: str
    action: str
    time: pd.Timestamp


@dataclass
class Sample:
    """One training conversation and where it came from."""

    messages: list[dict[str, str]]
    task: str
    user_id: str
    target_item_id: str | None
    time: pd.Timestamp | None

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "task": self.task,
            "user_id": self.user_id,
            "target_item_id": self.target_item_id,
            "time": None if self.time is None else self.time.isoformat(),
        }


# loading -----------------------------------------------------------------------------------
def item_infos(catalog: pd.DataFrame, sids: pd.DataFrame) -> dict[str, ItemInfo]:
    """ItemInfo per item that has a SID (items without one cannot be named by the model)."""
    codes = {str(i): tuple(int(c) for c in cs) for i, cs in zip(sids["item_id"], sids["codes"], strict=True)}
    years = catalog["year"] if "year" in catalog.columns else [None] * len(catalog)
    out = {}
    for item_id, title, text, cats, year in zip(catalog["item_id"], catalog["title"], catalog["text"],
                                               catalog["categories"], years, strict=True):
        item_id = str(item_id)
        if item_id not in codes:
            continue
        cat_list = tuple(str(c) for c in (list(cats) if cats is not None else []))
        out[item_id] = ItemInfo(item_id, str(title), str(text), cat_list, year_from(str(title), year), codes[item_id])
    return out


def user_events(interactions: pd.DataFrame, known_items: Iterable[str]) -> dict[str, list[Event]]:
    """Events per user in time order, keeping only items that have a SID."""
    known = set(known_items)
    df = interactions[interactions["item_id"].astype(str).isin(known)]
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    out: dict[str, list[Event]] = {}
    for user, item, action, ts in zip(df["user_id"], df["item_id"], df["action"], df["timestamp"], strict=True):
        out.setdefault(str(user), []).append(Event(str(item), str(action), pd.Timestamp(ts)))
    return out


# the builder -------------------------------------------------------------------------------
class ConversationBuilder:
    """Builds point-in-time samples for each task from one catalog + log."""

    def __init__(self, items: dict[str, ItemInfo], events: dict[str, list[Event]], config: BuildConfig,
                 teacher: Teacher | None = None, domain: Domain = MOVIE):
        self.domain = domain  # the catalog's words (system prompt, requests, traces)
        self.items = items
        self.events = events
        self.config = config
        self.teacher = teacher or Teacher(config.teacher)
        self.rng = random.Random(config.seed)
        actions = {e.action for evs in events.values() for e in evs}
        self.positive = tuple(a for a in config.positive_actions if a in actions) or tuple(sorted(actions))
        self.by_genre: dict[str, list[str]] = {}
        for info in items.values():
            for g in info.categories:
                self.by_genre.setdefault(g, []).append(info.item_id)

    # history helpers ------------------------------------------------------------------------
    def history_before(self, events: Sequence[Event], t: pd.Timestamp) -> list[Event]:
        """The user's events strictly before `t` (point-in-time correct, ties excluded)."""
        times = [e.time for e in events]
        return list(events[: bisect.bisect_left(times, t)])

    def prompt_history(self, history: Sequence[Event]) -> tuple[list[HistoryEvent], str | None]:
        """The most recent `history_len` events, plus a bounded summary when older ones are dropped."""
        recent = history[-self.config.history_len:]
        hevents = [HistoryEvent(self.items[e.item_id].codes, e.action, self.items[e.item_id].title) for e in recent]
        summary = None
        if len(history) > self.config.history_len:
            summary = taste_summary([(self.items[e.item_id], e.action) for e in history],
                                    positive_actions=self.positive, negative_actions=self.config.negative_actions,
                                    max_words=self.config.summary_max_words, word=self.domain.word)
        return hevents, summary

    def _pairs(self, history: Sequence[Event]) -> list[tuple[ItemInfo, str]]:
        return [(self.items[e.item_id], e.action) for e in history]

    def _trace(self, history: Sequence[Event], target: ItemInfo) -> tuple[str, Any]:
        ev = gather_evidence(self._pairs(history), target, positive_actions=self.positive,
                             negative_actions=self.config.negative_actions)
        text = self.teacher.trace(ev.facts(), template_trace(ev, self.domain.word))
        return wrap_think(text), ev

    # tasks ----------------------------------------------------------------------------------
    def next_item(self, user: str, history: Sequence[Event], target: Event) -> Sample:
        hevents, summary = self.prompt_history(history)
        msgs = next_item_messages(hevents, summary=summary, with_titles=self.config.with_titles, domain=self.domain)
        msgs.append({"role": "assistant", "content": next_item_answer(self.items[target.item_id].codes)})
        return Sample(msgs, "next_item", user, target.item_id, target.time)

    def action(self, user: str, history: Sequence[Event], target: Event) -> Sample:
        hevents, _ = self.prompt_history(history)
        msgs = action_messages(hevents, self.items[target.item_id].codes, with_titles=self.config.with_titles,
                               domain=self.domain)
        msgs.append({"role": "assistant", "content": action_answer(target.action)})
        return Sample(msgs, "action", user, target.item_id, target.time)

    def text_request(self, user: str, history: Sequence[Event], target: Event) -> Sample:
        info = self.items[target.item_id]
        request = self._request_for(info, history)
        hevents, summary = self.prompt_history(history)
        msgs = next_item_messages(hevents, request, summary=summary, with_titles=self.config.with_titles,
                                  domain=self.domain)
        if self.rng.random() < self.config.request_think_fraction:
            think, _ = self._trace(history, info)
            answer = f"{think}{sid_string(info.codes)} ({info.title})"
        else:
            answer = next_item_answer(info.codes)
        msgs.append({"role": "assistant", "content": answer})
        return Sample(msgs, "text_request", user, target.item_id, target.time)

    def _request_for(self, info: ItemInfo, history: Sequence[Event]) -> str:
        """A request the target satisfies: its genre, its decade (+ genre), or like a liked item sharing a genre."""
        options = []
        genre = self.rng.choice(info.categories) if info.categories else None
        if genre:
            options.append(f"I'm in the mood for a {genre.lower()} {self.domain.word}.")
            if info.decade is not None:
                options.append(f"Can you suggest a {decade_words(info.decade)} {genre.lower()} {self.domain.item}?")
        elif info.decade is not None:
            options.append(f"Something from the {decade_words(info.decade)}, please.")
        similar = [self.items[e.item_id] for e in history if e.action in self.positive
                   and set(self.items[e.item_id].categories) & set(info.categories) and e.item_id != info.item_id]
        if similar:
            options.append(f"Something like {self.rng.choice(similar[-5:]).title}?")
        return self.rng.choice(options) if options else "Surprise me with something good."

    def conversation(self, user: str, history: Sequence[Event], target: Event) -> Sample:
        info = self.items[target.item_id]
        liked = list(dict.fromkeys(self.items[e.item_id].title for e in reversed(history)
                                   if e.action in self.positive))[:3][::-1]
        disliked = [self.items[e.item_id].title for e in history if e.action in self.config.negative_actions][-1:]
        ask = self.domain.request
        if liked:
            ask = f"I recently enjoyed {', '.join(liked)}" + (f" but not {disliked[0]}" if disliked else "") + f". {ask}"
        think, ev = self._trace(history, info)
        picks = [(info, ev)] + self._extra_picks(history, info)
        lines = [f"{sid_string(p.codes)} ({p.title}): {explanation(e, self.domain.word)}." for p, e in picks]
        first = "Here is what I would pick:\n" if len(picks) > 1 else "Try this one:\n"
        msgs = [
            {"role": "system", "content": self.domain.system_prompt},
            {"role": "user", "content": ask},
            {"role": "assistant", "content": think + first + "\n".join(lines)},
            {"role": "user", "content": f"Tell me more about {info.title}."},
            {"role": "assistant", "content": f"{sid_string(info.codes)} {info.text}"},
        ]
        return Sample(msgs, "conversation", user, target.item_id, target.time)

    def _extra_picks(self, history: Sequence[Event], target: ItemInfo) -> list[tuple[ItemInfo, Any]]:
        """Up to two more catalog items sharing a genre with the target and unseen by the user so far."""
        seen = {e.item_id for e in history} | {target.item_id}
        pool = sorted({i for g in target.categories for i in self.by_genre.get(g, []) if i not in seen})
        picks = self.rng.sample(pool, k=min(len(pool), self.rng.randint(0, 2)))
        out = []
        for item_id in picks:
            info = self.items[item_id]
            out.append((info, gather_evidence(self._pairs(history), info, positive_actions=self.positive,
                                              negative_actions=self.config.negative_actions)))
        return out

    def alignment(self) -> list[Sample]:
        out = []
        for info in self.items.values():
            span = sid_string(info.codes)
            out.append(Sample([
                {"role": "system", "content": self.domain.system_prompt},
                {"role": "user", "content": f"What is {span}?"},
                {"role": "assistant", "content": info.text if info.text.startswith(info.title) else f"{info.title}. {info.text}"},
            ], "alignment", "", info.item_id, None))
            out.append(Sample([
                {"role": "system", "content": self.domain.system_prompt},
                {"role": "user", "content": f"Which item is {info.title}?"},
                {"role": "assistant", "content": next_item_answer(info.codes)},
            ], "alignment", "", info.item_id, None))
        return out

    # splits ---------------------------------------------------------------------------------
    def build(self) -> dict[str, list[Sample]]:
        """All splits: train (mixed tasks), valid and test (one next-item sample per user)."""
        cfg = self.config
        since = cfg.since_ts
        users = sorted(self.events)
        if cfg.max_users is not None and len(users) > cfg.max_users:
            users = sorted(random.Random(cfg.seed).sample(users, cfg.max_users))
        pools: dict[str, list[tuple[str, list[Event], Event]]] = {t: [] for t in ("next_item", "action")}
        valid: list[Sample] = []
        test: list[Sample] = []
        self.sequence_rows: list[dict[str, Any]] = []
        self.sequence_valid: list[dict[str, Any]] = []
        self.sequence_test: list[dict[str, Any]] = []
        for user in users:
            events = self.events[user]
            pos = [i for i, e in enumerate(events) if e.action in self.positive]
            held = [i for i in pos if since is None or events[i].time >= since]
            # test: the last positive; valid: the last positive strictly before it (ties share a time)
            earlier = [i for i in held if held and events[i].time < events[held[-1]].time]
            if earlier:
                v, t = events[earlier[-1]], events[held[-1]]
                if self.history_before(events, v.time):
                    valid.append(self.next_item(user, self.history_before(events, v.time), v))
                    test.append(self.next_item(user, self.history_before(events, t.time), t))
                cutoff = v.time
            else:
                cutoff = None  # too few positives to hold out: all of this user's data trains
            trained = [e for e in events if cutoff is None or e.time < cutoff]
            self.sequence_rows += self.windows(user, trained)
            if earlier and self.history_before(events, events[earlier[-1]].time):
                for target, rows in ((events[earlier[-1]], self.sequence_valid), (events[held[-1]], self.sequence_test)):
                    before = self.history_before(events, target.time)
                    rows.append({"user_id": user, "text": self.events_text(before[-self.prompt_events:]),
                                 "target_item_id": target.item_id, "target_action": target.action})
            for kind, idxs in (("next_item", pos), ("action", range(len(events)))):
                chosen = []
                for i in idxs:
                    e = events[i]
                    if cutoff is not None and e.time >= cutoff:
                        continue
                    hist = self.history_before(events, e.time)
                    if hist:
                        chosen.append((user, hist, e))
                if cfg.max_targets_per_user is not None:
                    chosen = chosen[-cfg.max_targets_per_user:]
                pools[kind].extend(chosen)
        if since is not None:
            for kind in pools:
                pools[kind] = self._new_plus_replay(pools[kind], lambda p: p[2].time >= since, cfg.seed + 1)
            self.sequence_rows = self._new_plus_replay(
                self.sequence_rows, lambda r: pd.Timestamp(r["last_time"]) >= since, cfg.seed + 4)
        train = self._mix(pools)
        random.Random(cfg.seed + 2).shuffle(train)
        return {"train": train, "valid": valid, "test": test}

    def _new_plus_replay(self, rows: list[Any], is_new: Any, seed: int) -> list[Any]:
        """Rows of the new period plus a seeded `replay_fraction` of the older ones."""
        new = [r for r in rows if is_new(r)]
        old = [r for r in rows if not is_new(r)]
        k = min(len(old), round(self.config.replay_fraction * len(new)))
        return new + random.Random(seed).sample(old, k)

    # sequences ------------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        """Codes per item (the disambiguation level included)."""
        return len(next(iter(self.items.values())).codes)

    @property
    def events_per_window(self) -> int:
        levels = self.levels
        per_event = tokens_per_event(levels)
        if self.config.window_tokens < per_event:
            raise ConfigError(f"`window_tokens` ({self.config.window_tokens}) is shorter than one event "
                              f"({per_event} tokens: an action + {levels} codes); set --window-tokens >= {per_event}")
        return self.config.window_tokens // per_event

    @property
    def prompt_events(self) -> int:
        """Events in a retrieval prompt: one window with room for the asked action (as `Recommender` builds it)."""
        return max(1, (self.config.window_tokens - 1) // tokens_per_event(self.levels))

    def events_text(self, events: Sequence[Event]) -> str:
        return history_text([HistoryEvent(self.items[e.item_id].codes, e.action) for e in events])

    def windows(self, user: str, events: Sequence[Event]) -> list[dict[str, Any]]:
        """The user's events as windows of at most `events_per_window` events, the most recent first."""
        if len(events) < 2:
            return []
        size = self.events_per_window
        stride = max(1, int(size * self.config.window_stride))
        out = []
        end = len(events)
        while True:
            start = max(0, end - size)
            chunk = events[start:end]
            out.append({"user_id": user, "text": self.events_text(chunk), "events": len(chunk),
                        "first_time": chunk[0].time.isoformat(), "last_time": chunk[-1].time.isoformat()})
            if start == 0:
                return out
            end -= stride

    def _mix(self, pools: dict[str, list[tuple[str, list[Event], Event]]]) -> list[Sample]:
        w = self.config.task_weights
        n_ref = len(pools["next_item"])
        rng = random.Random(self.config.seed + 3)
        out: list[Sample] = []

        def take(pool: list[Any], weight: float) -> list[Any]:
            n = round(weight * n_ref)
            if n >= len(pool):
                return list(pool)
            return rng.sample(pool, n)

        out += [self.next_item(*p) for p in take(pools["next_item"], w.get("next_item", 0.0))]
        out += [self.action(*p) for p in take(pools["action"], w.get("action", 0.0))]
        out += [self.text_request(*p) for p in take(pools["next_item"], w.get("text_request", 0.0))]
        out += [self.conversation(*p) for p in take(pools["next_item"], w.get("conversation", 0.0))]
        out += take(self.alignment(), w.get("alignment", 0.0))
        return out


# the stage ---------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, tmp.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def make_builder(catalog: pd.DataFrame, interactions: pd.DataFrame, sids: pd.DataFrame,
                 config: BuildConfig | None = None, teacher: Teacher | None = None,
                 domain: Domain = MOVIE) -> ConversationBuilder:
    config = config or BuildConfig()
    items = item_infos(catalog, sids)
    if not items:
        raise DataError("no catalog item has a SID; run `chatrec sids fit` first")
    events = user_events(interactions, items)
    if not events:
        raise DataError("no interaction refers to an item with a SID")
    return ConversationBuilder(items, events, config, teacher, domain)


def build_samples(catalog: pd.DataFrame, interactions: pd.DataFrame, sids: pd.DataFrame,
                  config: BuildConfig | None = None, teacher: Teacher | None = None) -> dict[str, list[Sample]]:
    """Pure core of `chatrec data build`: tables in, samples per split out."""
    return make_builder(catalog, interactions, sids, config, teacher).build()


def build_bundle(bundle: Bundle | str | Path, config: BuildConfig | None = None) -> dict[str, int]:
    """`chatrec data build`: write `train/{train,valid,test}.jsonl` and record the stage."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    config = config or BuildConfig()
    declared = bundle.stage("data") or {}  # roles stated (or read from the names) at import
    if config.positive_actions == ("like",) and declared.get("positive_actions"):
        config = dataclasses.replace(config, positive_actions=tuple(declared["positive_actions"]))
    if config.negative_actions == ("dislike",) and declared.get("negative_actions") is not None:
        config = dataclasses.replace(config, negative_actions=tuple(declared["negative_actions"]))
    inputs = {n: bundle.require(n) for n in ("catalog.parquet", "interactions.parquet", "sids.parquet")}
    catalog = pd.read_parquet(inputs["catalog.parquet"])
    interactions = pd.read_parquet(inputs["interactions.parquet"])
    sids = pd.read_parquet(inputs["sids.parquet"])
    teacher = Teacher(config.teacher, cache_path=config.teacher.cache_path or bundle.train_dir / "teacher_cache.jsonl")
    builder = make_builder(catalog, interactions, sids, config, teacher, Domain(bundle.domain))
    splits = builder.build()
    if not splits["train"]:
        raise DataError("no training samples: users need at least two events with a SID")
    counts: dict[str, int] = {}
    outputs = {}
    for split in SPLITS:
        path = bundle.train_dir / f"{split}.jsonl"
        counts[split] = write_jsonl(path, (s.to_json() for s in splits[split]))
        outputs[split] = path
    for name, rows in (("sequences", builder.sequence_rows), ("sequences_valid", builder.sequence_valid),
                       ("sequences_test", builder.sequence_test)):
        path = bundle.train_dir / f"{name}.jsonl"
        counts[name] = write_jsonl(path, rows)
        outputs[name] = path
    counts["sequence_events"] = sum(r["events"] for r in builder.sequence_rows)
    counts["tokens_per_event"] = tokens_per_event(builder.levels)
    for task, n in Counter(s.task for s in splits["train"]).items():
        counts[f"train_{task}"] = n
    counts.update({f"teacher_{k}": v for k, v in teacher.stats.items()})
    bundle.record_stage("build", config=config, inputs=inputs, outputs=outputs, counts=counts)
    return counts
