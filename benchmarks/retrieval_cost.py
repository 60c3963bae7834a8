"""Retrieval cost over HTTP, per engine: top-10 `/v1/recommendations` against one prefill of the same history.

For each engine, `chatrec serve` runs as a subprocess; every request uses a different test user's
history (no shared prompt cache between requests). Measured in the same run:

- top-10 latency p50 / p99 at 1 client and at 16 concurrent clients, and QPS at 16;
- the p50 of a `max_tokens=1` chat completion with the same history (`mode: model`, one prefill +
  one token), and the ratio of the two p50s (the issue's goal: at most 1.5);
- in process, on the same model: HF `generate` constrained beam search with
  `prefix_allowed_tokens_fn` (how the open SID recommenders serve; 20 beams, 10 returned) against
  `Recommender.recommend` (transformers engine), QPS of both;
- the top-10 overlap between the engines' answers on the same prompts (exactness across engines);
- a session's repeat: the same history asked again (its prompt cached), p50 against the first asks;
  and a chat's second turn (`max_tokens=1`), whose prompt extends the first turn's, against the
  first turn's prefill p50.

    .venv/bin/python benchmarks/retrieval_cost.py --bundle BUNDLE [--users 40] [--engines transformers,vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package
RESULTS = REPO / "benchmarks" / "results"


def histories(bundle: Path, n: int) -> list[list[dict[str, str]]]:
    log = pd.read_parquet(bundle / "interactions.parquet").sort_values(["user_id", "timestamp"])
    users = sorted(log["user_id"].unique(), key=str)[:n]
    by_user = {u: g for u, g in log.groupby("user_id")}
    return [[{"item_id": str(i), "action": str(a)} for i, a in zip(by_user[u]["item_id"], by_user[u]["action"],
                                                                   strict=True)][-120:] for u in users]


def serve(bundle: Path, engine: str, port: int, args: list[str]) -> Any:
    """`chatrec serve` as a subprocess (ui.local_server.LocalServer), healthy when this returns."""
    from ui.local_server import LocalServer

    return LocalServer(bundle, engine=engine, port=port, start_timeout=600, extra_args=args).start()


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1000, 1)


def bench_http(bundle: Path, engine: str, hists: list[list[dict[str, str]]], port: int,
               args: Sequence[str] = ()) -> dict[str, Any]:
    proc = serve(bundle, engine, port, list(args))
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"engine": engine + (" " + " ".join(args) if args else "")}
    try:
        with httpx.Client(timeout=600) as client:
            def rec(h: list[dict[str, str]]) -> tuple[float, list[str]]:
                t0 = time.perf_counter()
                r = client.post(url + "/v1/recommendations", json={"history": h, "k": 10})
                r.raise_for_status()
                return time.perf_counter() - t0, [it["item_id"] for it in r.json()["items"]]

            prompt_tokens: list[int] = []

            def chat(h: list[dict[str, str]], messages: list[dict[str, str]]) -> tuple[float, str]:
                t0 = time.perf_counter()
                r = client.post(url + "/v1/chat/completions", json={
                    "model": "chatrec", "max_tokens": 1, "messages": messages,
                    "chatrec": {"history": h, "mode": "model"}})
                r.raise_for_status()
                prompt_tokens.append(int(r.json()["usage"]["prompt_tokens"]))
                return time.perf_counter() - t0, r.json()["choices"][0]["message"]["content"]

            def prefill(h: list[dict[str, str]]) -> float:
                return chat(h, [{"role": "user", "content": "Next?"}])[0]

            def next_turn(h: list[dict[str, str]]) -> float:
                """A chat's second turn: its prompt extends the first one's, which the engine cached."""
                first = [{"role": "user", "content": "Next?"}]
                reply = chat(h, first)[1]
                return chat(h, [*first, {"role": "assistant", "content": reply},
                                {"role": "user", "content": "And another one?"}])[0]

            rec(hists[-1])  # warm up (not a measured user)
            prefill(hists[-2])
            half = len(hists) // 2
            pre = [prefill(h) for h in hists[:half]]
            pre_tokens = int(statistics.median(prompt_tokens[1:]))  # not the warm-up's
            single = [rec(h) for h in hists[half:]]
            out["top10"] = {h_i: ids for h_i, (_, ids) in enumerate(single, start=half)}
            lat = [t for t, _ in single]
            # a session's repeat: the same history again (its prompt cached by the first call)
            again = [rec(h) for h in hists[half:half + 8]]
            assert all(ids == out["top10"][half + i] for i, (_, ids) in enumerate(again)), "a repeat changed its top-10"
            out.update(repeat_p50_ms=pct([t for t, _ in again], 50), first_p50_ms=pct(lat[:8], 50))
            out["chat_next_turn_p50_ms"] = pct([next_turn(h) for h in hists[half:half + 8]], 50)
            with ThreadPoolExecutor(16) as pool:
                t0 = time.perf_counter()
                conc = list(pool.map(lambda h: rec(h)[0], hists[:half]))
                wall = time.perf_counter() - t0
            out.update(prefill_prompt_tokens_p50=pre_tokens, prefill_p50_ms=pct(pre, 50), top10_p50_ms=pct(lat, 50), top10_p99_ms=pct(lat, 99),
                       ratio_p50=round(statistics.median(lat) / statistics.median(pre), 2),
                       c16_p50_ms=pct(conc, 50), c16_p99_ms=pct(conc, 99), c16_qps=round(len(conc) / wall, 2))
    finally:
        proc.stop()
    return out


def bench_in_process(bundle: Path, hists: list[list[dict[str, str]]]) -> dict[str, Any]:
    """HF constrained `generate` (beam search with prefix_allowed_tokens_fn) against Recommender.recommend."""
    import torch

    from chatrec.recommender import Recommender

    rec = Recommender.from_bundle(bundle, engine="transformers")
    engine, trie = rec.engine, rec.core.trie
    model = engine.model

    def allowed_fn(n_prompt: int):  # type: ignore[no-untyped-def]
        def fn(batch_id: int, ids: torch.Tensor) -> list[int]:
            prefix = ids[n_prompt:].tolist()
            if len(prefix) >= trie.depth:
                return [int(engine.eos_ids[0])]
            return [int(t) for t in trie.allowed_next(prefix)]
        return fn

    t0 = time.perf_counter()
    for h in hists:
        rec.recommend([(e["item_id"], e["action"]) for e in h], k=10)
    ours = len(hists) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for h in hists:
        prompt = rec.retrieval_prompt([(e["item_id"], e["action"]) for e in h])
        with torch.inference_mode():
            model.generate(torch.as_tensor([prompt]), max_new_tokens=trie.depth, num_beams=20, num_return_sequences=10,
                           do_sample=False, prefix_allowed_tokens_fn=allowed_fn(len(prompt)),
                           pad_token_id=engine.pad_id, early_stopping=True)
    hf = len(hists) / (time.perf_counter() - t0)
    rec.close()
    return {"recommend_qps": round(ours, 2), "hf_generate_qps": round(hf, 2), "speedup": round(ours / hf, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--engines", default="transformers,vllm")
    ap.add_argument("--port", type=int, default=8777)
    ap.add_argument("--out", default=str(RESULTS / "retrieval_cost.json"))
    args = ap.parse_args()
    bundle = Path(args.bundle)
    hists = histories(bundle, args.users + 2)
    engines = args.engines.split(",")
    rows = [bench_http(bundle, e, hists, args.port + i) for i, e in enumerate(engines)]
    same = [r for r in rows if r["engine"] in ("transformers", "vllm")]
    overlap = None
    if len(same) == 2:
        a, b = same[0]["top10"], same[1]["top10"]
        overlap = round(statistics.mean(len(set(a[k]) & set(b[k])) / 10 for k in a), 3)
    in_proc = bench_in_process(bundle, hists[: args.users // 2])
    print(f"{'engine':<30} {'prefill p50':>11} {'top10 p50':>9} {'p99':>8} {'ratio':>6} {'16c p50':>8} {'16c p99':>8} "
          f"{'16c QPS':>7} {'repeat p50':>10} {'next turn':>9}")
    for r in rows:
        print(f"{r['engine']:<30} {r['prefill_p50_ms']:>11} {r['top10_p50_ms']:>9} {r['top10_p99_ms']:>8} "
              f"{r['ratio_p50']:>6} {r['c16_p50_ms']:>8} {r['c16_p99_ms']:>8} {r['c16_qps']:>7} "
              f"{r['repeat_p50_ms']:>10} {r['chat_next_turn_p50_ms']:>9}")
    print(f"in process: Recommender.recommend {in_proc['recommend_qps']} QPS vs HF constrained generate "
          f"{in_proc['hf_generate_qps']} QPS ({in_proc['speedup']}x); engines' top-10 overlap {overlap}")
    for r in rows:
        r.pop("top10")
    Path(args.out).write_text(json.dumps({
        "engines": rows, "in_process": in_proc, "top10_overlap_between_engines": overlap, "users": args.users,
        "bundle": bundle.name, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}, indent=1) + "\n")


if __name__ == "__main__":
    main()
