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
