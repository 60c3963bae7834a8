"""`chatrec demo --quick` end to end: the whole pipeline, then the endpoint answers the openai client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    import httpx
    import pandas as pd

    out, port, ui_port = tmp_path / "bundle", _free_port(), _free_port()
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatrec", "demo", "--quick", "--out", str(out), "--engine", "transformers",
         "--port", str(port), "--ui-port", str(ui_port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 1500
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(3)
        else:
            pytest.fail("the demo's endpoint never became healthy:\n" + (tmp_path / "demo.log").read_text()[-3000:])

        stages = json.loads((out / "manifest.json").read_text())["stages"]
        for name in ("data", "sids", "tokenizer", "build", "finetune", "export", "eval"):
            assert f"demo.{name}" in stages
        results = json.loads((out / "eval.json").read_text())
        assert any(name.startswith("llm") for name in results)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="chatrec", messages=[{"role": "user", "content": "Recommend me a comedy."}], max_tokens=48)
        assert reply.choices[0].message.content
        recs = httpx.post(f"http://127.0.0.1:{port}/v1/recommendations",
                          json={"history": [], "k": 5}, timeout=60).json()
        catalog_ids = set(pd.read_parquet(out / "catalog.parquet")["item_id"])
        items = recs["items"]
        assert items and all(item["item_id"] in catalog_ids for item in items)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
