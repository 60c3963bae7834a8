"""`LocalServer` and `chatrec ui` without `--endpoint`: a real `chatrec serve` subprocess is started and stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from chatrec.cli import app
from chatrec.testing import make_catalog
from ui.local_server import LocalServer, ServerStartError, free_port, wait_for_health


def test_local_server_reports_a_server_that_exits(tmp_path: Path) -> None:
    server = LocalServer(tmp_path, start_timeout=120)
    with pytest.raises(ServerStartError, match=r"exited with code 4.*has no model; run `chatrec tokenizer extend"):
        server.start()
    assert server.proc is None


def test_ui_says_in_one_line_when_its_local_server_fails(tmp_path: Path) -> None:
    make_catalog(5).to_parquet(tmp_path / "catalog.parquet")  # a catalog but no model
    result = CliRunner().invoke(app, ["ui", "--bundle", str(tmp_path), "--port", str(free_port())])
    assert result.exit_code == 7
    assert "exited with code 4" in result.output and "has no model" in result.output
    assert "Traceback" not in result.output


def test_wait_for_health_times_out_on_a_closed_port() -> None:
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="did not answer within 1 s"):
        wait_for_health(f"http://127.0.0.1:{free_port()}/health", timeout=1.0)
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_ui_without_endpoint_starts_and_stops_its_own_server(tmp_path: Path) -> None:
    from chatrec.testing import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle").root
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chatrec", "ui", "--bundle", str(bundle), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        server_url = None
        assert proc.stdout is not None
        for line in proc.stdout:  # "server ready at http://127.0.0.1:PORT"
            m = re.search(r"server ready at (http://\S+)", line)
            if m:
                server_url = m.group(1)
                break
        assert server_url, "chatrec ui never reported its server"
        wait_for_health(f"http://127.0.0.1:{port}", timeout=120, proc=proc)  # type: ignore[arg-type]
        assert httpx.get(f"{server_url}/health", timeout=5).status_code == 200
        os.killpg(proc.pid, signal.SIGTERM)  # Ctrl-C / kill of the UI stops the server it started
        proc.wait(timeout=30)
        with pytest.raises(httpx.ConnectError):  # the UI waited for its server to stop before exiting
            httpx.get(f"{server_url}/health", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_local_server_passes_its_api_key_by_environment_not_argv(tmp_path: Path) -> None:
    from ui.local_server import LocalServer

    server = LocalServer(tmp_path, engine="transformers", port=free_port(), api_key="s3cret")
    assert not any("s3cret" in arg for arg in server.command())  # argv is visible to every user in `ps`
