"""The CLI frame, token format, prompts and bundle manifest."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatrec import tokens
from chatrec.bundle import Bundle, atomic_path
from chatrec.cli import app
from chatrec.prompts import HistoryEvent, history_text, next_item_messages, sequence_prompt, tokens_per_event


def test_cli_version_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == "0.1.0"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("data", "sids", "model", "tokenizer"):
        assert group in result.output


def test_sid_string_round_trip() -> None:
    span = tokens.sid_string([17, 203, 88, 0])
    assert span == "<|sid_begin|><|s0_17|><|s1_203|><|s2_88|><|s3_0|><|sid_end|>"
    assert tokens.parse_sid(span) == (17, 203, 88, 0)
    text = f"Try {span} (Alien, 1979) or {tokens.sid_string([1, 2])}."
    assert [codes for _, _, codes in tokens.find_sid_spans(text)] == [(17, 203, 88, 0), (1, 2)]


@pytest.mark.parametrize("bad", ["<|sid_begin|><|s1_3|><|sid_end|>", "<|sid_begin|><|sid_end|>", "s0_1"])
def test_parse_sid_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        tokens.parse_sid(bad)


def test_action_token_validates_name() -> None:
    assert tokens.action_token("like") == "<|act_like|>"
    assert tokens.parse_action_token("<|act_like|>") == "like"
    with pytest.raises(ValueError):
        tokens.action_token("Not OK")


def test_next_item_messages_holds_history() -> None:
    msgs = next_item_messages([HistoryEvent((1, 2, 0), "like")], "a comedy")
    assert msgs[0]["role"] == "system"
    assert "History: <|act_like|><|s0_1|><|s1_2|><|s2_0|>\n" in msgs[1]["content"]
    assert msgs[1]["content"].endswith("a comedy")


def test_history_is_the_compact_event_string() -> None:
    events = [HistoryEvent((1, 2, 0), "like"), HistoryEvent((3, 0, 1), "dislike")]
    assert history_text(events) == "<|act_like|><|s0_1|><|s1_2|><|s2_0|><|act_dislike|><|s0_3|><|s1_0|><|s2_1|>"
    assert sequence_prompt(events, "like").endswith("<|s2_1|><|act_like|>")
    assert tokens_per_event(3) == 4


def test_manifest_records_and_detects_staleness(tmp_path) -> None:
    bundle = Bundle(tmp_path / "b")
    src = tmp_path / "in.txt"
    src.write_text("a")
    bundle.record_stage("data", config={"x": 1}, inputs={"in": src}, counts={"rows": 1})
    assert bundle.is_fresh("data", {"x": 1}, {"in": src})
    assert not bundle.is_fresh("data", {"x": 2}, {"in": src})
    src.write_text("b")
    assert not bundle.is_fresh("data", {"x": 1}, {"in": src})
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    assert manifest["stages"]["data"]["counts"] == {"rows": 1}


def test_atomic_path_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
