"""Serving builds the same retrieval prompts that `chatrec data build` trained on: the sequence prompt
without a request, the chat prompt with one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chatrec.conversation import prompt_ids
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
