"""`chatrec tokenizer extend` through Typer's CliRunner, including bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from chatrec.cli import app
from chatrec.errors import BundleError, ConfigError
from chatrec.testing import make_tiny_bundle, smollm2_tokenizer, tiny_llama
from tokenizer_ext import TokenMap, load_extended


def test_cli_extend_from_a_local_base(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", n_items=24, extend=False)
    base = tmp_path / "base"
    tok = smollm2_tokenizer()
    tiny_llama(tok, hidden=32, layers=1, heads=2).save_pretrained(base)
    tok.save_pretrained(base)
    result = CliRunner().invoke(app, ["tokenizer", "extend", "--bundle", str(bundle.root), "--base", str(base),
                                      "--init", "semantic"])
    assert result.exit_code == 0, result.output
    assert "code tokens" in result.output
    model, tok2, tm = load_extended(bundle.model_dir)
    assert tm == TokenMap.load(bundle.model_dir)
    assert (bundle.model_dir / "trie.npz").exists()
    record = bundle.stage("tokenizer")
    assert record is not None and record["config"]["init"] == "semantic"
    assert record["source_model"] == str(base.resolve())


def test_cli_extend_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["tokenizer", "extend", "--bundle", str(tmp_path), "--init", "random"])
    assert result.exit_code == ConfigError.exit_code
    assert "`init` must be one of ['mean', 'semantic'], got 'random'" in result.output
    result = runner.invoke(app, ["tokenizer", "extend", "--bundle", str(tmp_path / "empty")])
    assert result.exit_code == BundleError.exit_code
    assert "sids.parquet does not exist" in result.output and "chatrec sids fit" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert runner.invoke(app, ["tokenizer", "extend", "--help"]).exit_code == 0
