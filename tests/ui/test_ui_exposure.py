"""`chatrec ui` on a non-loopback interface (issue 28, item 7): the page acts with the server's API
key, so it needs a login (or an explicit --insecure); keys and the login come by file or environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatrec.cli import app
from chatrec.errors import ConfigError

runner = CliRunner()


def test_ui_on_all_interfaces_without_a_login_refuses_to_start(tmp_path: Path) -> None:
    for args in (["--endpoint", "http://127.0.0.1:9"], ["--bundle", str(tmp_path / "nope")]):
        result = runner.invoke(app, ["ui", "--host", "0.0.0.0", *args], env={"CHATREC_UI_AUTH": ""})
        assert result.exit_code != 0
        assert "without a login" in result.output and "--auth-file" in result.output, result.output
        assert "Traceback" not in result.output


def test_ui_login_and_keys_by_file(tmp_path: Path) -> None:
    from chatrec.cli.serve import secret
    from ui.app import UIConfig

    (tmp_path / "auth").write_text("alice:wonder land\n")
    (tmp_path / "empty").write_text("\n")
    auth = secret(None, tmp_path / "auth", "CHATREC_UI_AUTH")
    assert auth == "alice:wonder land"
    assert UIConfig(endpoint="http://127.0.0.1:9", host="0.0.0.0", auth=auth).auth == auth
    assert UIConfig(endpoint="http://127.0.0.1:9", host="0.0.0.0", insecure=True).host == "0.0.0.0"
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        UIConfig(endpoint="http://127.0.0.1:9", host="0.0.0.0", auth="nocolon")
    with pytest.raises(ConfigError, match="is empty"):
        secret(None, tmp_path / "empty", "X")
    result = runner.invoke(app, ["ui", "--host", "0.0.0.0", "--endpoint", "http://127.0.0.1:9", "--auth-file",
                                 str(tmp_path / "missing")])
    assert result.exit_code != 0 and "cannot read the key file" in result.output
