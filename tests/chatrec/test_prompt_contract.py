"""Serving builds the same retrieval prompts that `chatrec data build` trained on: the sequence prompt
without a request, the chat prompt with one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chatrec.conversation import prompt_ids
from chatrec.prompts import KV_BLOCK, block_trimmed
from chatrec.recommender import Recommender
from chatrec.testing import make_tiny_bundle
from finetune.data import BuildConfig, build_bundle, read_jsonl


def _history(log: pd.DataFrame, user: str, before: str) -> list[tuple[str, str]]:
    rows = log[(log["user_id"] == user) & (log["timestamp"] < pd.Timestamp(before))]
    return list(zip(rows["item_id"], rows["action"], strict=True))


def test_recommender_prompts_equal_the_training_prompts(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", n_users=6)
    build_bundle(bundle, BuildConfig(history_len=3, summary_max_words=12, window_tokens=14,
                                     task_weights={"next_item": 1.0, "text_request": 1.0}, request_think_fraction=0.0))
    log = pd.read_parquet(bundle.interactions_path)
    rec = Recommender.from_bundle(bundle, engine="transformers")
    try:
        assert rec.history_len == 3 and rec.sequence_events == 3  # (14 - 1) // 4 tokens per event
        tests = {r["user_id"]: r for r in read_jsonl(bundle.train_dir / "test.jsonl")}
        long = 0
        for row in read_jsonl(bundle.train_dir / "sequences_test.jsonl"):
            history = _history(log, row["user_id"], tests[row["user_id"]]["time"])
            want = rec.engine.tokenizer(row["text"] + "<|act_like|>", add_special_tokens=False)["input_ids"]
            assert rec.retrieval_prompt(history) == want, row["user_id"]
            long += len(history) > 3  # cut to the last window
        assert long > 0
        requests = [r for r in read_jsonl(bundle.train_dir / "train.jsonl") if r["task"] == "text_request"]
        assert requests
        for row in requests:
            history = _history(log, row["user_id"], row["time"])
            request = row["messages"][1]["content"].splitlines()[-1]
            trained = prompt_ids(rec.engine.tokenizer, row["messages"][:-1], suffix_ids=[rec.token_map.sid_begin])
            assert rec.retrieval_prompt(history, request) == trained, row["user_id"]
    finally:
        rec.close()


def test_block_trimmed_ends_prompts_just_past_a_kv_block() -> None:
    assert block_trimmed(63, 4) == 56  # 253 tokens -> 225 = 7 blocks + the asked action
    assert block_trimmed(3, 4) == 3  # 13 tokens: inside the first block, nothing to gain
    assert block_trimmed(20, 4) == 18  # may drop 2 of 20: 81 -> 73 tokens, 9 past a block (was 17)
    assert block_trimmed(0, 4) == 0
    for per_event in (3, 4, 5):
        for n in range(1, 200):
            kept = block_trimmed(n, per_event)
            assert n - n // 8 <= kept <= n
            ends = {m: (per_event * m + 1) % KV_BLOCK for m in range(n - n // 8, n + 1)}
            if per_event * n + 1 > KV_BLOCK:
                assert ends[kept] == min(ends.values()) and all(ends[m] > ends[kept] for m in ends if m > kept)


def test_trimmed_prompt_is_the_newest_events_and_no_filler(tmp_path: Path) -> None:
    """The served plain prompt keeps the newest events of the trained prompt and ends just past a KV block."""
    bundle = make_tiny_bundle(tmp_path / "b", n_users=6)
    build_bundle(bundle, BuildConfig())
    rec = Recommender.from_bundle(bundle, engine="transformers")
    try:
        items = sorted(rec.codes)
        history = [(items[i % len(items)], "like" if i % 3 else "dislike") for i in range(80)]
        ends = []
        for n in (1, 3, 8, 9, 20, 40, rec.sequence_events, 80):
            rec.trim_history = False
            full = rec.retrieval_prompt(history[-n:])
            rec.trim_history = True
            cut = rec.retrieval_prompt(history[-n:])
            events = (len(full) - 1) // rec.per_event
            assert (len(full) - 1) % rec.per_event == 0 and (len(cut) - 1) % rec.per_event == 0
            assert full[len(full) - len(cut):] == cut  # a suffix on event boundaries: the newest events
            assert (len(cut) - 1) // rec.per_event == block_trimmed(events, rec.per_event)
            ends.append(len(cut) % KV_BLOCK)
        assert ends[-1] == ends[-2] and ends[-1] <= rec.per_event  # a full window ends within one event of a block
    finally:
        rec.close()
