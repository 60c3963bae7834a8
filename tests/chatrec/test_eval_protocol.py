"""`--protocol last-item`: the published leave-last-item-out split, beside the default `liked` one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chatrec.cli import app
from chatrec.errors import ConfigError
from chatrec.evaluation import EvalConfig, leave_last_item_out, make_split
from tests.conftest import make_catalog, make_interactions

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _log(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"user_id": u, "item_id": i, "action": a, "timestamp": T0 + pd.Timedelta(hours=h)}
                         for u, i, a, h in rows])


LOG = _log([
    ("a", "1", "like", 0), ("a", "2", "dislike", 1), ("a", "3", "watch", 1), ("a", "4", "dislike", 2),
    ("b", "1", "like", 0), ("b", "2", "like", 1),                           # b: too short to hold out
    ("c", "5", "like", 0), ("c", "6", "like", 1), ("c", "5", "watch", 2),   # c: test target repeats its input
])


def test_last_event_whatever_its_action_is_the_target() -> None:
    split = leave_last_item_out(LOG)
    test = {c.user_id: c for c in split.test}
    valid = {c.user_id: c for c in split.valid}
    # a: a dislike is the test target; same-hour "2" and "3" keep log order, so "3" is the validation target
    assert test["a"].target == "4" and test["a"].target_action == "dislike"
    assert test["a"].items == ("1", "2", "3") and test["a"].actions == ("like", "dislike", "watch")
    assert valid["a"].target == "3" and valid["a"].items == ("1", "2")
    assert "b" not in test and "b" not in valid
    assert "c" not in test and valid["c"].target == "6" and valid["c"].items == ("5",)
    assert split.description["dropped_repeat_targets"] == 1 and split.description["protocol"] == "last-item"
    train = split.train.groupby("user_id")["item_id"].apply(list).to_dict()
    assert train == {"a": ["1", "2"], "b": ["1", "2"], "c": ["5"]}
    assert split.cutoffs["a"] == T0 + pd.Timedelta(hours=1) and split.cutoffs["b"] is None
    assert leave_last_item_out(LOG, min_history=3).test == []  # a has 2 events before its validation target


def test_differs_from_the_liked_protocol() -> None:
    liked = make_split(LOG, "liked")
    last = make_split(LOG, "last-item")
    assert {c.user_id: c.target for c in liked.test} != {c.user_id: c.target for c in last.test}
    assert make_split(LOG, "liked").description["method"].startswith("leave-last-out")
    with pytest.raises(ConfigError, match="`protocol` must be one of liked, last-item"):
        make_split(LOG, "next")
    with pytest.raises(ConfigError, match="`protocol` must be one of liked, last-item, got 'last'"):
        EvalConfig(protocol="last")


def test_on_a_generated_log_targets_are_last_and_nothing_after_validation_trains() -> None:
    catalog = make_catalog(40)
    inter = make_interactions(catalog, n_users=60, per_user=6)
    split = leave_last_item_out(inter, known_items=catalog["item_id"])
    ordered = inter.sort_values(["user_id", "timestamp"], kind="stable")
    last = ordered.groupby("user_id")["item_id"].last()
    assert len(split.test) > 30
    for case in split.test:
        assert case.target == last[case.user_id] and case.target not in case.items
    n_train = split.train.groupby("user_id").size()
    n_all = ordered.groupby("user_id").size()
    for case in split.valid:
        assert n_train[case.user_id] == n_all[case.user_id] - 2 == len(case.items)


def test_cli_eval_protocol(tmp_path: Path) -> None:
    catalog = make_catalog(40)
    catalog.to_parquet(tmp_path / "catalog.parquet")
    make_interactions(catalog, n_users=60, per_user=6).to_parquet(tmp_path / "interactions.parquet")
    runner = CliRunner()
    ok = runner.invoke(app, ["eval", "--bundle", str(tmp_path), "--systems", "popularity,sasrec", "--protocol",
                             "last-item", "--no-conversational", "--sasrec-epochs", "2", "--sasrec-negatives", "8",
                             "--sasrec-max-len", "6", "--sasrec-threads", "2"])
    assert ok.exit_code == 0, ok.output
    split = json.loads((tmp_path / "eval.json").read_text())["split"]
    assert split["protocol"] == "last-item" and split["method"].startswith("leave-last-item-out")
    sasrec = split["systems"]["sasrec"]["config"]
    assert (sasrec["negatives"], sasrec["max_len"], sasrec["epochs"], sasrec["threads"]) == (8, 6, 2, 2)
    bad = runner.invoke(app, ["eval", "--bundle", str(tmp_path), "--protocol", "last"])
    assert bad.exit_code == 2 and "`protocol` must be one of liked, last-item" in bad.stderr


def test_targets_a_model_trained_on_are_dropped() -> None:
    from chatrec.evaluation import drop_trained_targets

    # a and d have one liked event each: the liked split trains on all their events, the last-item split
    # holds out their last two (a: "4" and "3"; d: "9" and "8"); c's last-item test target repeats its input
    log = pd.concat([LOG, _log([("d", "7", "watch", 0), ("d", "8", "like", 1), ("d", "9", "watch", 2)])])
    last = make_split(log, "last-item")
    trained = make_split(log, "liked").train
    kept = drop_trained_targets(last, trained, "why")
    assert {c.user_id for c in last.test} - {c.user_id for c in kept.test} == {"a", "d"}
    assert {c.user_id for c in last.valid} - {c.user_id for c in kept.valid} == {"a", "d"}
    assert {c.user_id for c in kept.valid} == {"c"}
    assert kept.description["dropped_trained_targets"] == {"test": 2, "valid": 2, "why": "why"}
    assert all((c.user_id, c.target) not in set(zip(trained["user_id"], trained["item_id"], strict=True))
               for c in kept.test + kept.valid)
    assert kept.train is last.train  # the baselines still train on the protocol's own rows


def test_eval_scores_every_system_without_the_llms_training_targets(tmp_path: Path) -> None:
    """`chatrec eval --protocol last-item` with an LLM (trained on the liked split): no target it trained on."""
    from chatrec.evaluation import evaluate_bundle
    from chatrec.testing import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "b", n_users=20)
    inter = pd.read_parquet(bundle.interactions_path)
    a, b, c = inter["item_id"].unique()[:3]
    solo = pd.DataFrame({"user_id": "solo", "item_id": [a, b, c], "action": ["watch", "like", "watch"],
                         "timestamp": inter["timestamp"].max() + pd.to_timedelta([1, 2, 3], unit="h")})
    pd.concat([inter, solo.astype(inter.dtypes.to_dict())], ignore_index=True).to_parquet(bundle.interactions_path)
    logged: list[str] = []
    config = EvalConfig(systems=("popularity", "llm-tiny"), protocol="last-item", ks=(5, 10), conversational=False,
                        stated_titles=(), progress=False, engine="transformers")
    out = evaluate_bundle(bundle, config, log=logged.append, out=tmp_path / "eval.json")
    dropped = out["split"]["dropped_trained_targets"]
    assert dropped["test"] >= 1 and dropped["valid"] >= 1
    assert out["popularity"]["users"] == out["llm-tiny"]["users"] == out["split"]["test_users"] - dropped["test"]
    assert any("whose target the LLM trained on" in line for line in logged)
    baselines = evaluate_bundle(bundle, EvalConfig(systems=("popularity",), protocol="last-item", conversational=False,
                                                   stated_titles=(), progress=False), log=logged.append,
                                out=tmp_path / "base.json")
    assert "dropped_trained_targets" not in baselines["split"]  # no LLM: the published protocol as it is
