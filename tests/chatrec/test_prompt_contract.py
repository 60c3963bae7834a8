"""Serving builds the same retrieval prompt that `chatrec data build` trained on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chatrec.conversation import prompt_ids
from chatrec.recommender import Recommender
from chatrec.testing import make_tiny_bundle
from finetune.data import BuildConfig, build_bundle, read_jsonl


def test_recommender_prompt_equals_the_training_prompt_for_long_histories(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", n_users=6)
    build_bundle(bundle, BuildConfig(history_len=3, summary_max_words=12))
    rows = [r for r in read_jsonl(bundle.train_dir / "test.jsonl") if r["task"] == "next_item"]
    log = pd.read_parquet(bundle.interactions_path)
    rec = Recommender.from_bundle(bundle, engine="transformers")
    try:
        assert rec.history_len == 3
        checked = 0
        for row in rows:
            user = log[(log["user_id"] == row["user_id"]) & (log["timestamp"] < pd.Timestamp(row["time"]))]
            history = list(zip(user["item_id"], user["action"], strict=True))
            trained = prompt_ids(rec.engine.tokenizer, row["messages"][:-1], suffix_ids=[rec.token_map.sid_begin])
            assert rec.retrieval_prompt(history) == trained, row["user_id"]
            checked += len(history) > 3  # a long history: cut to 3 events + the taste summary
        assert checked > 0
    finally:
        rec.close()
