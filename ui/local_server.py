"""Start a `chatrec serve` subprocess on a free loopback port, wait until healthy, stop it on exit.

Used by `chatrec ui` when no `--endpoint` is given, and by the end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from chatrec.errors import ChatrecError


class ServerStartError(ChatrecError):
    """The local `chatrec serve` process exited or did not become healthy in time."""

    exit_code = 7


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_health(url: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                    interval: float = 0.3) -> None:
    """Poll `url` until it answers 200; raise `ServerStartError` on timeout or when `proc` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"the server process exited with code {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise ServerStartError(f"{url} did not answer within {timeout:.0f} s")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: deliver SIGTERM to this child when the parent dies, so a killed UI leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalServer:
    """`chatrec serve --bundle B --engine E --port P` in its own process group.

    `with LocalServer(bundle) as server: server.url` — the group is terminated on exit (then killed
    after `stop_timeout`), so engine child processes do not outlive it.
    """

    def __init__(self, bundle: str | Path, *, engine: str = "transformers", host: str = "127.0.0.1",
                 port: int | None = None, api_key: str | None = None, start_timeout: float = 300.0,
                 stop_timeout: float = 10.0, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.bundle = Path(bundle)
        self.engine = engine
        self.host = host
        self.port = port or free_port(host)
        self.api_key = api_key
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args or [])
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="chatrec-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "chatrec", "serve", "--bundle", str(self.bundle), "--engine", self.engine,
               "--host", self.host, "--port", str(self.port)]
        return cmd + self.extra_args  # the API key goes by environment (start()), not argv that `ps` shows

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> LocalServer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **(self.env or {})}
        if self.api_key:
            env["CHATREC_API_KEY"] = self.api_key
        else:
            env.pop("CHATREC_API_KEY", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            wait_for_health(f"{self.url}/health", timeout=self.start_timeout, proc=self.proc)
        except ServerStartError as exc:
            tail = self.log_tail()
            self.stop()
            raise ServerStartError(f"{exc}; last lines of its log ({self.log_path}): {tail}") from None
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
