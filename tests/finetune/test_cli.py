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
