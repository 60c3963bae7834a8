"""`chatrec eval`'s `chat` system: the served chat turn scored like the other systems (chatrec.chat_eval)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def test_the_chat_turn_is_scored_with_and_without_a_request(tmp_path: Path) -> None:
    from chatrec.evaluation import Catalog, EvalConfig, leave_last_out, run
    from chatrec.testing import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "b", n_items=40, n_users=12)
    catalog = Catalog(pd.read_parquet(bundle.catalog_path))
    split = leave_last_out(pd.read_parquet(bundle.interactions_path), known_items=catalog.ids)
    config = EvalConfig(systems=("itemknn", "chat"), engine="transformers", progress=False)
    results = run(split, catalog, config, bundle, log=lambda _: None)
    chat = results["chat"]["metrics"] if "metrics" in results["chat"] else results["chat"]
    assert 0.0 <= chat["hr@10"] <= 1.0 and "conv_hr@10" in chat
    # every request ("a comedy film", "from the 80s") is read as a filter on the chat path
    assert chat["conv_sat@5"] == 1.0


def test_the_chat_is_told_stated_titles_in_words_and_understands_them(tmp_path: Path) -> None:
    from chatrec.chat_eval import ChatSystem
    from chatrec.evaluation import Catalog, leave_last_out, stated_cases
    from chatrec.testing import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "b", n_items=40, n_users=12)
    catalog = Catalog(pd.read_parquet(bundle.catalog_path))
    split = leave_last_out(pd.read_parquet(bundle.interactions_path), known_items=catalog.ids)
    chat = ChatSystem("chat", bundle, engine="transformers")
    chat.fit(split, catalog)
    try:
        cases = stated_cases(split.test, 2)
        assert cases
        recs, understood = chat.recommend_stated(cases, 5)
    finally:
        chat.close()
    assert understood == 1.0  # every title, typed the way a person types it, linked as liked
    for rec, case in zip(recs, cases, strict=True):
        assert rec and not set(rec) & set(case.items)  # the stated titles are never recommended back
