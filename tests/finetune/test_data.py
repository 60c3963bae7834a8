"""Training-data building: point-in-time correctness, splits, task mixing, traces."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from chatrec.bundle import Bundle
from chatrec.errors import ConfigError
from chatrec.tokens import SID_BEGIN, find_events, find_sid_spans
from finetune.data import BuildConfig, build_bundle, build_samples, item_infos, user_events


def _code_to_item(sids: pd.DataFrame) -> dict[tuple[int, ...], str]:
    return {tuple(int(c) for c in cs): str(i) for i, cs in zip(sids["item_id"], sids["codes"], strict=True)}


def _history_spans(sample) -> list[tuple[int, ...]]:
    """SIDs named in the sample's user turns (everything the model sees as input history)."""
    text = "\n".join(m["content"] for m in sample.messages if m["role"] == "user")
    return [codes for _, codes in find_events(text)] + [codes for _, _, codes in find_sid_spans(text)]


def test_no_input_event_at_or_after_target_time(tables):
    catalog, inter, sids = tables
    # put two events of one user at the same instant: a tie must not leak into either's history
    inter = inter.copy()
    inter.loc[3, "timestamp"] = inter.loc[2, "timestamp"]
    splits = build_samples(catalog, inter, sids, BuildConfig(history_len=50, task_weights={
        "next_item": 1.0, "action": 1.0, "text_request": 1.0, "conversation": 1.0, "alignment": 0.0}))
    code_item = _code_to_item(sids)
    times = {(u, i): [] for u, i in zip(inter["user_id"], inter["item_id"], strict=True)}
    for u, i, t in zip(inter["user_id"], inter["item_id"], inter["timestamp"], strict=True):
        times[(u, i)].append(pd.Timestamp(t))
    checked = 0
    for split, samples in splits.items():
        for s in samples:
            # an action sample's candidate is its target, not history: drop it
            spans = _history_spans(s)[:-1] if s.task == "action" else _history_spans(s)
            for codes in spans:
                item = code_item[codes]
                # the item must have an event of this user strictly before the target time
                assert any(t < s.time for t in times[(s.user_id, item)]), (split, s.task, item)
                checked += 1
    assert checked > 100


def test_history_is_exactly_the_events_before_target(tables):
    catalog, inter, sids = tables
    splits = build_samples(catalog, inter, sids, BuildConfig(history_len=100))
    code_item = _code_to_item(sids)
    for s in splits["test"] + [x for x in splits["train"] if x.task == "next_item"]:
        rows = inter[(inter["user_id"] == s.user_id) & (inter["timestamp"] < s.time)].sort_values("timestamp")
        assert [code_item[c] for c in _history_spans(s)] == rows["item_id"].tolist()


def test_leave_last_out_per_user(tables):
    catalog, inter, sids = tables
    splits = build_samples(catalog, inter, sids, BuildConfig())
    likes = inter[inter["action"] == "like"].sort_values("timestamp")
    for s in splits["test"]:
        assert s.target_item_id == likes[likes["user_id"] == s.user_id]["item_id"].iloc[-1]
    valid_time = {s.user_id: s.time for s in splits["valid"]}
    assert set(valid_time) == {s.user_id for s in splits["test"]}
    assert len(valid_time) >= 10
    for s in splits["train"]:
        if s.user_id in valid_time:
            assert s.time < valid_time[s.user_id]


def test_task_mixing_follows_weights(tables):
    catalog, inter, sids = tables
    cfg = BuildConfig(task_weights={"next_item": 1.0, "action": 0.5, "alignment": 0.25, "text_request": 0.0,
                                    "conversation": 0.25})
    counts = Counter(s.task for s in build_samples(catalog, inter, sids, cfg)["train"])
    n = counts["next_item"]
    assert n > 40
    assert counts["action"] == round(0.5 * n)
    assert counts["alignment"] == round(0.25 * n)
    assert counts["conversation"] == round(0.25 * n)
    assert counts["text_request"] == 0


def test_traces_and_answers_have_the_right_shape(tables):
    catalog, inter, sids = tables
    cfg = BuildConfig(request_think_fraction=1.0, task_weights={
        "next_item": 1.0, "action": 1.0, "alignment": 1.0, "text_request": 1.0, "conversation": 1.0})
    train = build_samples(catalog, inter, sids, cfg)["train"]
    for s in train:
        answer = s.messages[-1]["content"] if s.task != "conversation" else s.messages[2]["content"]
        if s.task in ("text_request", "conversation"):
            assert answer.startswith("<think>") and "</think>" in answer
            think = answer[len("<think>"):answer.index("</think>")]
            assert len(think.split()) >= 5
            # the trace names no SID: it reasons from titles, genres and years
            assert SID_BEGIN not in think
            n_items = len(find_sid_spans(answer))
            assert 1 <= n_items <= 3
        elif s.task == "next_item":
            assert answer.startswith(SID_BEGIN) and len(find_sid_spans(answer)) == 1
        elif s.task == "action":
            assert answer.startswith("<|act_") and answer.endswith("|>")


def test_trace_is_built_from_history_evidence(tables):
    catalog, inter, sids = tables
    cfg = BuildConfig(task_weights={"next_item": 1.0, "conversation": 1.0})
    train = build_samples(catalog, inter, sids, cfg)["train"]
    convs = [s for s in train if s.task == "conversation"]
    titles = set(catalog["title"])
    grounded = 0
    for s in convs:
        think = s.messages[2]["content"].split("</think>")[0]
        target_title = catalog.set_index("item_id").loc[s.target_item_id, "title"]
        named = {t for t in titles if t in think}
        assert target_title not in named  # reasons toward the answer, does not just state it
        grounded += bool(named)
    assert grounded >= len(convs) // 2


def test_long_history_is_cut_with_a_summary(tables):
    catalog, inter, sids = tables
    train = build_samples(catalog, inter, sids, BuildConfig(history_len=3, summary_max_words=8))["train"]
    long = [s for s in train if s.task == "next_item" and "Long-term taste:" in s.messages[1]["content"]]
    assert long
    for s in long:
        assert len(_history_spans(s)) == 3
        summary = s.messages[1]["content"].split("\n")[0].removeprefix("Long-term taste: ")
        assert len(summary.split()) <= 8


def test_global_time_cut_and_replay(tables):
    catalog, inter, sids = tables
    since = inter["timestamp"].sort_values().iloc[len(inter) // 2]
    no_replay = build_samples(catalog, inter, sids, BuildConfig(since=since.isoformat(), task_weights={"next_item": 1.0}))
    assert no_replay["train"] and all(s.time >= since for s in no_replay["train"])
    assert all(s.time >= since for s in no_replay["valid"] + no_replay["test"])
    replay = build_samples(catalog, inter, sids, BuildConfig(since=since.isoformat(), replay_fraction=0.5,
                                                             task_weights={"next_item": 1.0}))
    old = [s for s in replay["train"] if s.time < since]
    assert len(old) == round(0.5 * len(no_replay["train"]))


def test_build_bundle_writes_jsonl_and_manifest(tmp_path, tables):
    catalog, inter, sids = tables
    bundle = Bundle(tmp_path / "b").ensure()
    catalog.to_parquet(bundle.catalog_path)
    inter.to_parquet(bundle.interactions_path)
    sids.to_parquet(bundle.sids_path)
    counts = build_bundle(bundle, BuildConfig())
    for split in ("train", "valid", "test"):
        lines = (bundle.train_dir / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == counts[split] > 0
        row = json.loads(lines[0])
        assert set(row) == {"messages", "task", "user_id", "target_item_id", "time"}
    assert bundle.stage("build")["counts"]["train"] == counts["train"]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="task_weights"):
        BuildConfig(task_weights={"next_itm": 1.0})
    with pytest.raises(ConfigError, match="history_len"):
        BuildConfig(history_len=0)
    with pytest.raises(ConfigError, match="since"):
        BuildConfig(since="yesterday-ish")


def test_items_without_sid_are_left_out(tables):
    catalog, inter, sids = tables
    items = item_infos(catalog, sids.iloc[:-5])
    events = user_events(inter, items)
    assert all(e.item_id in items for evs in events.values() for e in evs)


def test_sequences_are_the_training_history_in_windows(tables):
    from finetune.data import make_builder

    catalog, inter, sids = tables
    builder = make_builder(catalog, inter, sids, BuildConfig(window_tokens=25, window_stride=0.5))
    splits = builder.build()
    valid_time = {s.user_id: s.time for s in splits["valid"]}
    code_item = _code_to_item(sids)
    assert builder.events_per_window == 5  # 25 tokens / (action + 3 codes + disambiguation)
    by_user: dict[str, list[dict]] = {}
    for row in builder.sequence_rows:
        by_user.setdefault(row["user_id"], []).append(row)
    assert set(by_user) == set(inter["user_id"])
    for user, rows in by_user.items():
        events = inter[inter["user_id"] == user].sort_values("timestamp", kind="stable")
        if user in valid_time:  # nothing at or after the validation target trains
            events = events[events["timestamp"] < valid_time[user]]
        expected = list(zip(events["action"], events["item_id"], strict=True))
        # the most recent window ends at the last training event; each holds <= 5 events
        for row in rows:
            parsed = [(a, code_item[c]) for a, c in find_events(row["text"])]
            assert 2 <= len(parsed) == row["events"] <= 5
            assert row["text"] == "".join(f"<|act_{a}|>" + "".join(f"<|s{level}_{c}|>" for level, c in enumerate(
                sids.set_index("item_id").loc[i, "codes"])) for a, i in parsed)
        assert [(a, code_item[c]) for a, c in find_events(rows[0]["text"])] == expected[-rows[0]["events"]:]
        # together the windows cover every training event, in order
        covered = set()
        for row in rows:
            n = len(find_events(row["text"]))
            for start in range(len(expected) - n + 1):
                if [(a, code_item[c]) for a, c in find_events(row["text"])] == expected[start:start + n]:
                    covered |= set(range(start, start + n))
                    break
        assert covered == set(range(len(expected)))
    for row in builder.sequence_valid:
        assert row["target_action"] == "like"
        assert len(find_events(row["text"])) <= 5


def test_window_shorter_than_one_event_is_refused(tables):
    catalog, inter, sids = tables
    with pytest.raises(ConfigError, match="window-tokens >= 5"):
        build_samples(catalog, inter, sids, BuildConfig(window_tokens=4))


def test_a_shop_catalog_trains_on_its_own_words(tmp_path) -> None:
    """`--domain product`: no movie, film or watch in prompts, requests or traces; movies unchanged."""
    from chatrec.prompts import MOVIE, SYSTEM_PROMPT, Domain
    from chatrec.testing import make_tiny_bundle
    from finetune.data import BuildConfig, build_bundle

    assert MOVIE.system_prompt == SYSTEM_PROMPT and MOVIE.request == "What should I watch next?"
    bundle = make_tiny_bundle(tmp_path / "shop", n_items=36, domain="product")
    build_bundle(bundle, BuildConfig(history_len=3))
    text = (bundle.train_dir / "train.jsonl").read_text().lower()
    assert "recommender of products" in text and "what should i get next?" in text
    for word in ("movie", "film", "watch next"):
        assert word not in text, word
    assert Domain("book").request == "What should I read next?"
