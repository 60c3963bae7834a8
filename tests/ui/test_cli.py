"""`chatrec ui` through Typer's CliRunner: help and bad input (exit code and one-line message)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from chatrec.cli import app

runner = CliRunner()


def test_ui_help_lists_its_options() -> None:
    result = runner.invoke(app, ["ui", "--help"])
    assert result.exit_code == 0
    for option in ("--endpoint", "--api-key", "--bundle", "--host", "--port"):
        assert option in result.output


def test_ui_rejects_an_endpoint_that_is_not_a_url() -> None:
    result = runner.invoke(app, ["ui", "--endpoint", "localhost:8000"])
    assert result.exit_code == 2
    assert "error: `endpoint` must be an http(s) URL, got 'localhost:8000'" in result.output
    assert "Traceback" not in result.output


def test_ui_without_endpoint_needs_a_bundle_with_a_catalog(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ui", "--bundle", str(tmp_path / "nope")])
    assert result.exit_code == 4
    assert "catalog.parquet does not exist; run `chatrec data import" in result.output
