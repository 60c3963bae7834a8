"""Serving benchmark: constrained vs unconstrained tokens/s, top-10 retrieval latency, 16 clients.

For each engine, starts `chatrec serve` as a subprocess (own process group) on a loopback port
and measures through HTTP, as an application sees it:

1. single-stream decode tokens/s on the same prompts with and without the SID constraint
   (greedy, `ignore_eos`, a fixed number of tokens; half the prompts start inside a SID span so
   the trie path is exercised, half are free text where code tokens are banned), and the ratio;
2. `/v1/recommendations` top-10 latency p50 / p99 over random histories;
3. throughput with 16 concurrent chat clients (requests/s and generated tokens/s).

    python benchmarks/serve.py --bundle BUNDLE            # a bundle with model/ (or export/)
    python benchmarks/serve.py --make-bundle DIR          # builds DIR: synthetic catalog + SmolLM2-135M

The second form builds a 2,000-item synthetic catalog with 3-level SIDs (64 x 64 + disambiguation)
and extends the real SmolLM2-135M-Instruct (`chatrec model prepare` + `tokenizer extend`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

PROMPTS = [
    "Recommend a movie for a rainy evening.",
    "I liked a quiet drama last week. What next?",
    "Suggest something funny to watch with friends.",
    "What is a good science fiction film?",
    "I want a classic from the seventies.",
    "Pick a thriller that is not too violent.",
]


def make_bundle(root: Path, n_items: int = 2000, levels: tuple[int, int] = (64, 64)) -> Path:
    """Synthetic catalog + log + SIDs, extended with the real SmolLM2-135M-Instruct."""
    from chatrec.bundle import Bundle
    from chatrec.testing import make_catalog, make_interactions, make_sids
    from tokenizer_ext import extend_bundle

    bundle = Bundle(root).ensure()
    if (bundle.model_dir / "trie.npz").exists():
        return root
    catalog = make_catalog(n_items, seed=0)
    catalog.to_parquet(bundle.catalog_path, index=False)
    make_interactions(catalog, n_users=50, seed=0).to_parquet(bundle.interactions_path, index=False)
    make_sids(catalog, levels=levels, seed=0).to_parquet(bundle.sids_path, index=False)
    extend_bundle(bundle, base="smollm2-135m-instruct", init="mean", quiet=True)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, bundle: Path, engine: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        self._log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatrec", "serve", "--bundle", str(bundle), "--engine", engine,
             "--port", str(self.port), "--max-tokens-limit", "256"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started = time.time()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - started > 900:
                self.stop()
                raise SystemExit(f"server not healthy after 900 s; see {log}")
            time.sleep(1)
        self.start_s = time.time() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def chat(client: httpx.Client, url: str, prompt: str, *, constrained: bool, max_tokens: int,
         start_with_item: bool, ignore_eos: bool = True) -> tuple[int, float]:
    body = {"model": "chatrec", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": ignore_eos,
            "chatrec": {"constrained": constrained, "start_with_item": start_with_item and constrained}}
    t = time.perf_counter()
    r = client.post(url + "/v1/chat/completions", json=body, timeout=900)
    dt = time.perf_counter() - t
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"]), dt


def bench_engine(bundle: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    srv = Server(bundle, engine, Path(args.log_dir) / f"serve-{engine}.log")
    out: dict[str, Any] = {"engine": engine, "start_s": srv.start_s}
    try:
        with httpx.Client() as client:
            chat(client, srv.url, "warm up", constrained=True, max_tokens=8, start_with_item=True)
            chat(client, srv.url, "warm up", constrained=False, max_tokens=8, start_with_item=False)
            tok = {True: 0, False: 0}
            secs = {True: 0.0, False: 0.0}
            for rep in range(args.repeats):
                for i, prompt in enumerate(PROMPTS):
                    # same prompt ids in both modes: the span start is a prompt suffix only in constrained mode,
                    # so spans are exercised by free-text banning for odd prompts and the trie for even ones
                    for constrained in ((True, False) if (rep + i) % 2 else (False, True)):
                        n, dt = chat(client, srv.url, prompt, constrained=constrained, max_tokens=args.max_tokens,
                                     start_with_item=False)
                        tok[constrained] += n
                        secs[constrained] += dt
            out["tok_s_constrained"] = tok[True] / secs[True]
            out["tok_s_unconstrained"] = tok[False] / secs[False]
            out["ratio"] = out["tok_s_constrained"] / out["tok_s_unconstrained"]
            # in-span decoding: every answer opens with an item, then free text
            n_span, s_span = 0, 0.0
            for prompt in PROMPTS:
                n, dt = chat(client, srv.url, prompt, constrained=True, max_tokens=args.max_tokens,
                             start_with_item=True)
                n_span, s_span = n_span + n, s_span + dt
            out["tok_s_item_first"] = n_span / s_span

            ids = pd.read_parquet(bundle / "catalog.parquet", columns=["item_id"])["item_id"].tolist()
            rng = np.random.default_rng(0)
            lat = []
            for _ in range(args.retrievals):
                hist = [{"item_id": str(x), "action": str(rng.choice(["like", "dislike", "watch"]))}
                        for x in rng.choice(ids, size=int(rng.integers(1, 10)), replace=False)]
                t = time.perf_counter()
                r = client.post(srv.url + "/v1/recommendations", json={"history": hist, "k": 10}, timeout=900)
                lat.append(time.perf_counter() - t)
                r.raise_for_status()
                assert len(r.json()["items"]) == 10
            out["retrieval_p50_ms"] = 1000 * statistics.median(lat)
            out["retrieval_p99_ms"] = 1000 * float(np.percentile(lat, 99))

        def client_run(c: int) -> int:
            with httpx.Client() as cl:
                return sum(chat(cl, srv.url, PROMPTS[(c + j) % len(PROMPTS)], constrained=True,
                                max_tokens=args.concurrent_tokens, start_with_item=(c + j) % 2 == 0)[0]
                           for j in range(args.per_client))

        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            total = sum(pool.map(client_run, range(args.clients)))
        wall = time.perf_counter() - t
        out["concurrent_req_s"] = args.clients * args.per_client / wall
        out["concurrent_tok_s"] = total / wall
    finally:
        srv.stop()
    return out


def table(rows: list[dict[str, Any]], clients: int) -> str:
    head = ("| engine | start (s) | tok/s constrained | tok/s unconstrained | ratio | tok/s item-first | "
            f"top-10 p50 (ms) | top-10 p99 (ms) | {clients} clients req/s | {clients} clients tok/s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['start_s']:.0f} | {r['tok_s_constrained']:.1f} | "
                     f"{r['tok_s_unconstrained']:.1f} | {r['ratio']:.3f} | {r['tok_s_item_first']:.1f} | "
                     f"{r['retrieval_p50_ms']:.0f} | {r['retrieval_p99_ms']:.0f} | {r['concurrent_req_s']:.2f} | "
                     f"{r['concurrent_tok_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--bundle", type=Path, help="Existing bundle with model/ or export/.")
    g.add_argument("--make-bundle", type=Path, help="Build a synthetic bundle with SmolLM2-135M here (reused).")
    p.add_argument("--engines", default="transformers,vllm")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--retrievals", type=int, default=30)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=2)
    p.add_argument("--concurrent-tokens", type=int, default=32)
    p.add_argument("--log-dir", default="/tmp")
    p.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = p.parse_args()
    bundle = args.bundle or make_bundle(args.make_bundle)
    rows = []
    for engine in args.engines.split(","):
        row = bench_engine(Path(bundle), engine, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows, args.clients))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
