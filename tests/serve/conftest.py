"""Server fixtures: a tiny bundle and `chatrec serve` as a subprocess on a free loopback port.

`RemoteServer` follows vLLM's `RemoteOpenAIServer` test pattern: start the real CLI in its own
process group, poll `/health`, hand out `openai` clients, kill the whole group at the end (a
killed vLLM parent must not leave an engine child behind).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
ADMIN_KEY = "test-admin-key"
START_TIMEOUT = 420.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RemoteServer:
    """`chatrec serve` in a subprocess; `.client()` gives an `openai.OpenAI` pointed at it."""

    def __init__(self, bundle: Path, engine: str, *args: str, api_key: str | None = API_KEY,
                 log: Path | None = None):
        self.port = free_port()
        self.api_key = api_key
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "chatrec", "serve", "--bundle", str(bundle), "--engine", engine,
               "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        env = {**{k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"},  # --kv-cache-gib sizes it
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        self.log_path = log or bundle / "server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not healthy after {START_TIMEOUT}s:\n{self.log_path.read_text()[-3000:]}")

    def client(self, api_key: str | None = None, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or self.api_key or "none",
                             max_retries=0, timeout=120, **kwargs)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


REPO = Path(__file__).resolve().parents[2]


class StockVLLM:
    """vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on a bundle's model
    folder, with or without the chatrec logits processor: the upstream of `chatrec serve --upstream`."""

    def __init__(self, model_dir: Path, log: Path, *, plugin: bool = True, port: int | None = None,
                 api_key: str | None = None, kv_cache_gib: float | None = None):
        self.port = port or free_port()
        self.kv_cache_gib = kv_cache_gib  # None: VLLM_CPU_KVCACHE_SPACE=1 (whole GiB only)
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_dir, self.log_path, self.plugin, self.api_key = model_dir, log, plugin, api_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--port", str(self.port), "--dtype", "float32", "--max-model-len", "2048", "--block-size", "32",
               "--max-num-seqs", "64", "--seed", "0", "--host", "127.0.0.1"]
        if self.plugin:
            cmd += ["--logits-processors", "serve.vllm_processor:ChatrecLogitsProcessor"]
        if self.kv_cache_gib is not None:
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 2**30))]
        headers = {}
        if self.api_key:  # by environment, not argv (`ps` shows argv)
            headers = {"Authorization": f"Bearer {self.api_key}"}
        env = {**{k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}, "HF_HUB_OFFLINE": "1",
               **({} if self.kv_cache_gib is not None else {"VLLM_CPU_KVCACHE_SPACE": "1"}),
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
               **({"VLLM_API_KEY": self.api_key} if self.api_key else {}),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self._log = open(self.log_path, "a")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                     start_new_session=True)
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM server not up after {START_TIMEOUT}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def tiny_bundle(root: Path, **kwargs):
    """A tiny bundle whose model vLLM's CPU attention accepts (head size 32: hidden 128, 4 heads)."""
    from chatrec.testing import make_tiny_bundle

    return make_tiny_bundle(root, hidden=128, **kwargs)


@pytest.fixture(scope="session")
def serve_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("serve") / "bundle").root


ENGINES = ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)]
# the serve acceptance suite also runs against `chatrec serve --upstream` over stock vLLM with the plugin
SERVERS = [*ENGINES, pytest.param("upstream", marks=pytest.mark.vllm)]


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest, serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RemoteServer]:
    """One server per engine (and per test module), with an API key and chat logging on; `upstream`
    is the gateway over a stock vLLM server with the chatrec processor."""
    engine = request.param
    if engine in ("vllm", "upstream"):
        pytest.importorskip("vllm")
    import shutil

    bundle = tmp_path_factory.mktemp(f"serve-{engine}") / "bundle"
    shutil.copytree(serve_bundle, bundle)
    reload_path = bundle.parent / "new"  # test_reload_adds_items... writes it
    upstream = None
    args: list[str] = []
    if engine == "upstream":
        upstream = StockVLLM(bundle / "model", bundle.parent / "vllm.log")
        args = ["--upstream", upstream.url, "--upstream-timeout", "120"]
    srv = RemoteServer(bundle, "remote" if upstream else engine, *args, "--log-chats", "--max-tokens-limit", "64",
                       "--admin-key", ADMIN_KEY, "--reload-bundles", f"new={reload_path}")
    srv.upstream = upstream  # type: ignore[attr-defined]
    srv.engine = engine  # type: ignore[attr-defined]
    srv.bundle = bundle  # type: ignore[attr-defined]
    srv.reload_path = reload_path  # type: ignore[attr-defined]
    yield srv
    srv.stop()
    if upstream is not None:
        upstream.stop()
