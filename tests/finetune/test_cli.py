"""`chatrec data build`, `chatrec finetune`, `chatrec export` as a user runs them (Typer CliRunner)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chatrec.bundle import Bundle
from chatrec.cli import app

runner = CliRunner()


def _bundle(tmp_path, tables) -> Bundle:
    catalog, inter, sids = tables
    b = Bundle(tmp_path / "b").ensure()
    catalog.to_parquet(b.catalog_path)
    inter.to_parquet(b.interactions_path)
    sids.to_parquet(b.sids_path)
    return b


def test_data_build_writes_splits(tmp_path, tables):
    b = _bundle(tmp_path, tables)
    res = runner.invoke(app, ["data", "build", "--bundle", str(b.root), "--history-len", "5",
                              "--weights", "next_item=1,action=0.5"])
    assert res.exit_code == 0, res.output
    assert "next: `chatrec finetune" in res.output
    rows = [json.loads(x) for x in (b.train_dir / "train.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"next_item", "action"}


def test_bad_input_exits_with_one_line(tmp_path, tables):
    b = _bundle(tmp_path, tables)
    res = runner.invoke(app, ["data", "build", "--bundle", str(b.root), "--weights", "next_item=lots"])
    assert res.exit_code == 2 and "--weights" in res.output
    res = runner.invoke(app, ["data", "build", "--bundle", str(tmp_path / "empty")])
    assert res.exit_code == 4 and "chatrec data import" in res.output
    res = runner.invoke(app, ["finetune", "--from", str(b.root)])
    assert res.exit_code == 2 and "--logs" in res.output
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root)])
    assert res.exit_code == 4 and "chatrec tokenizer extend" in res.output
    res = runner.invoke(app, ["export", "--bundle", str(b.root)])
    assert res.exit_code == 4


def test_every_command_has_help():
    for cmd in (["data", "build"], ["finetune"], ["export"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "--bundle" in res.output


def test_sequence_recipe_errors_name_the_fix(tmp_path):
    from chatrec.testing import make_tiny_bundle

    b = make_tiny_bundle(tmp_path / "b")
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root)])
    assert res.exit_code == 4 and "chatrec data build" in res.output
    res = runner.invoke(app, ["data", "build", "--bundle", str(b.root), "--window-tokens", "2"])
    assert res.exit_code == 2 and "--window-tokens >= 4" in res.output
    res = runner.invoke(app, ["data", "build", "--bundle", str(b.root)])
    assert res.exit_code == 0 and "(4 tokens each)" in res.output
    (b.train_dir / "sequences.jsonl").unlink()  # a bundle built before sequences existed
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root)])
    assert res.exit_code == 4 and "run `chatrec data build" in res.output and "again" in res.output
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root), "--lora", "--lora-r", "0"])
    assert res.exit_code == 2 and "`lora_r` must be >= 1, got 0" in res.output
    res = runner.invoke(app, ["export", "--bundle", str(b.root)])
    assert res.exit_code == 4 and "chatrec finetune" in res.output


def test_sequence_flags_reach_the_recipe(tmp_path):
    """`--average-from` and `--trim-above-mb` land in the recorded config and take effect."""
    from chatrec.testing import make_tiny_bundle

    b = make_tiny_bundle(tmp_path / "b")
    assert runner.invoke(app, ["data", "build", "--bundle", str(b.root), "--history-len", "3"]).exit_code == 0
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root), "--max-steps", "4", "--batch-size", "4",
                              "--keep-layers", "1", "--rows-steps", "0", "--eval-users", "0", "--threads", "1", "--quiet",
                              "--average-from", "0.5", "--trim-above-mb", "1"])
    assert res.exit_code == 0, res.output
    stage = b.stage("finetune")
    assert stage["config"]["average_from"] == 0.5 and stage["config"]["trim_above_mb"] == 1.0
    assert stage["counts"]["averaged_steps"] == 2 and "seq-last" in stage["snapshots"]
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root), "--average-from", "1"])
    assert res.exit_code == 2 and "average_from" in res.output


def test_lora_flags_train_adapters_at_full_depth_and_export_both_layouts(tmp_path):
    from chatrec.testing import make_tiny_bundle

    b = make_tiny_bundle(tmp_path / "b")
    assert runner.invoke(app, ["data", "build", "--bundle", str(b.root), "--history-len", "3"]).exit_code == 0
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root), "--keep-layers", "1", "--full-depth"])
    assert res.exit_code == 2 and "--keep-layers N or --full-depth" in res.output
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root), "--lora", "--full-depth", "--lora-r", "4",
                              "--max-steps", "3", "--batch-size", "4", "--rows-steps", "1", "--eval-users", "0",
                              "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "LoRA on 2 layers" in res.output and "1 process(es)" in res.output
    stage = b.stage("finetune")
    assert stage["config"]["lora"] and stage["config"]["keep_layers"] is None and stage["config"]["lora_r"] == 4
    assert stage["config"]["learning_rate"] == 2e-3  # the LoRA default
    res = runner.invoke(app, ["export", "--bundle", str(b.root)])
    assert res.exit_code == 0, res.output
    assert "multi_adapter:" in res.output and (b.export_dir / "multi" / "adapters" / "chatrec").is_dir()
    res = runner.invoke(app, ["finetune", "--bundle", str(b.root), "--resume", "--max-steps", "3"])
    assert res.exit_code == 4 and "no saved state" in res.output  # --checkpoint-every 500 never wrote one
