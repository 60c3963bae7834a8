"""Score a running chatrec server over HTTP, sharing no code with `chatrec eval`.

What a user of the endpoint would run to check the served model: it reads the bundle's raw files
(`interactions.parquet`, `catalog.parquet`) with pandas, derives the leave-last-out split itself
(per user, time-ordered: the last liked event is the test target, the last liked event strictly
before it the validation target; the input is every event strictly before the target; cases whose
target is already in the input are dropped), sends each user's last `--history` input events to
`POST /v1/recommendations` with `k: 10` and every input item excluded, and prints HR@10 and
NDCG@10 beside popularity (training-interaction counts, input items excluded) on the same users,
with a 95% bootstrap interval over users of the ratio, and the request latency. When the bundle
has `eval.json`, the `chatrec eval` LLM row is printed beside it with the relative difference.

    .venv/bin/chatrec serve --bundle BUNDLE &            # any engine, any options
    .venv/bin/python benchmarks/http_eval.py --bundle BUNDLE [--url http://127.0.0.1:8000] [--label vllm]

Writes benchmarks/results/http_eval_<label>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


def split_cases(log: pd.DataFrame, which: str = "test") -> tuple[list[dict[str, Any]], pd.Series]:
    """The held-out cases of `which` split, and training-interaction counts per item (for popularity)."""
    cases, train = split_log(log, which)
    return cases, train["item_id"].value_counts()


def split_log(log: pd.DataFrame, which: str = "test") -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The held-out cases of `which` split, and the training interactions (every event before a
    held-out user's validation target, all events of the other users)."""
    log = log.assign(item_id=log["item_id"].astype(str), action=log["action"].astype(str))
    log = log.sort_values(["user_id", "timestamp"], kind="stable")
    positive = {"like"} if (log["action"] == "like").any() else set(log["action"])
    cases, train_parts = [], []
    for user, events in log.groupby("user_id", sort=True):
        t = events["timestamp"]
        liked = events[events["action"].isin(positive)]
        if liked.empty:
            train_parts.append(events)
            continue
        test_row = liked.iloc[-1]
        before = liked[liked["timestamp"] < test_row["timestamp"]]
        if before.empty:
            train_parts.append(events)
            continue
        valid_row = before.iloc[-1]
        train_parts.append(events[t < valid_row["timestamp"]])
        if (t < valid_row["timestamp"]).sum() < 1:
            continue
        target = test_row if which == "test" else valid_row
        inputs = events[t < target["timestamp"]]
        if target["item_id"] in set(inputs["item_id"]):
            continue
        cases.append({"user": str(user), "target": target["item_id"],
                      "history": list(zip(inputs["item_id"], inputs["action"], strict=True))})
    return cases, pd.concat(train_parts)


def gains(ranked: list[list[str]], cases: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@K and HR@K gains (one relevant item per user)."""
    ndcg, hr = [], []
    for items, case in zip(ranked, cases, strict=True):
        top = items[:K]
        hit = case["target"] in top
        hr.append(1.0 if hit else 0.0)
        ndcg.append(1.0 / math.log2(top.index(case["target"]) + 2) if hit else 0.0)
    return np.array(ndcg), np.array(hr)


def ratio_interval(a: np.ndarray, b: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) / mean(b) over users resampled together (paired)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(rounds, len(a)))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-12)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def server_args(doc: str | None) -> argparse.ArgumentParser:
    """The options every over-HTTP benchmark takes: the bundle, the server, the split."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="The bundle the server serves (its raw files are read).")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=os.environ.get("CHATREC_API_KEY"))
    ap.add_argument("--split", choices=("test", "valid"), default="test")
    return ap


def main() -> None:
    ap = server_args(__doc__)
    ap.add_argument("--history", type=int, default=100, help="Most recent input events sent as the history.")
    ap.add_argument("--max-users", type=int, default=None, help="First N users by id (default: all).")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--label", default="server", help="Name of this run (engine and options), for the output file.")
    ap.add_argument("--out", default=None)
    ap.add_argument("--gains-out", default=None, help="Also write each user's NDCG@10 gain in `score_gains.py`'s "
                    "format, so `score_gains.py report --llm` pairs the served model with the baselines by user.")
    ap.add_argument("--seed", type=int, default=0, help="The bundle's seed, recorded in --gains-out (what report pools by).")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    log = pd.read_parquet(bundle / "interactions.parquet")
    catalog = pd.read_parquet(bundle / "catalog.parquet")
    cases, counts = split_cases(log[log["item_id"].astype(str).isin(set(catalog["item_id"].astype(str)))], args.split)
    cases = cases[: args.max_users] if args.max_users else cases
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    client = httpx.Client(base_url=args.url, headers=headers, timeout=300)

    def ask(case: dict[str, Any]) -> tuple[list[str], float]:
        body = {"history": [{"item_id": i, "action": a} for i, a in case["history"][-args.history:]], "k": K,
                "exclude_item_ids": sorted({i for i, _ in case["history"]})}
        t0 = time.perf_counter()
        r = client.post("/v1/recommendations", json=body)
        r.raise_for_status()
        return [it["item_id"] for it in r.json()["items"]], time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(ask, cases))
    wall = time.perf_counter() - t0
    served = [a for a, _ in answers]
    order = counts.index.astype(str).tolist() + sorted(set(catalog["item_id"].astype(str)) - set(counts.index))
    popular = [[i for i in order if i not in seen][:K] for seen in ({i for i, _ in c["history"]} for c in cases)]
    s_ndcg, s_hr = gains(served, cases)
    manifest = json.loads((bundle / "manifest.json").read_text()) if (bundle / "manifest.json").exists() else {}
    trained = (manifest.get("stages", {}).get("finetune") or {}).get("counts", {})
    tokens = bundle / "export" / "chatrec_tokens.json"  # an events model's served popularity prior, if any
    served_events = (json.loads(tokens.read_text()).get("events") or {}) if tokens.exists() else {}
    p_ndcg, p_hr = gains(popular, cases)
    lo, hi = ratio_interval(s_ndcg, p_ndcg)
    row = {"label": args.label, "split": args.split, "users": len(cases), "history": args.history,
           "ndcg@10": round(float(s_ndcg.mean()), 4), "hr@10": round(float(s_hr.mean()), 4),
           "popularity_ndcg@10": round(float(p_ndcg.mean()), 4), "popularity_hr@10": round(float(p_hr.mean()), 4),
           "ndcg_ratio_to_popularity": round(float(s_ndcg.mean() / max(p_ndcg.mean(), 1e-12)), 3),
           "ratio_95ci": [round(lo, 3), round(hi, 3)],
           "p50_ms": round(statistics.median(t for _, t in answers) * 1000, 1), "wall_s": round(wall, 1),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "bundle": str(bundle),
           **{k: trained.get(k) for k in ("train_minutes", "steps")},
           "popularity_weight": served_events.get("popularity_weight"),
           "top10": {c["user"]: a for c, a in zip(cases, served, strict=True)}}
    evaluated = None
    if (bundle / "eval.json").exists() and args.split == "test":
        results = json.loads((bundle / "eval.json").read_text())
        llm = next((k for k in results if k.startswith("llm")), None)
        if llm:
            evaluated = {"system": llm, "ndcg@10": results[llm]["ndcg@10"], "hr@10": results[llm]["hr@10"],
                         "engine": results[llm].get("engine") or results["split"]["systems"][llm].get("engine")}
            row["chatrec_eval"] = evaluated
            row["relative_diff_to_eval"] = round(float(s_ndcg.mean()) / evaluated["ndcg@10"] - 1, 4)
    print(f"| system | users | HR@10 | NDCG@10 | x popularity (95% CI) | p50 ms |\n|---|---|---|---|---|---|\n"
          f"| {args.label} (over HTTP) | {len(cases)} | {row['hr@10']:.4f} | {row['ndcg@10']:.4f} | "
          f"{row['ndcg_ratio_to_popularity']:.2f} ({lo:.2f}-{hi:.2f}) | {row['p50_ms']} |\n"
          f"| popularity | {len(cases)} | {row['popularity_hr@10']:.4f} | {row['popularity_ndcg@10']:.4f} | 1.00 | |")
    if evaluated:
        print(f"| chatrec eval: {evaluated['system']} ({evaluated['engine']}) | | {evaluated['hr@10']:.4f} | "
              f"{evaluated['ndcg@10']:.4f} | served / evaluated NDCG@10 - 1: {row['relative_diff_to_eval']:+.2%} | |")
    out = Path(args.out) if args.out else RESULTS / f"http_eval_{args.label}.json"
    out.write_text(json.dumps(row, indent=1) + "\n")
    print(f"wrote {out}")
    if args.gains_out:
        run = {"cases": args.split, "model": "final", "users": len(cases), "user_ids": [c["user"] for c in cases],
               "train_minutes": trained.get("train_minutes"), "steps": trained.get("steps"),
               "systems": {"llm-served-http": {"ndcg@10": row["ndcg@10"], "hr@10": row["hr@10"], "url": args.url,
                                               "history": args.history, "gains": [round(float(g), 5) for g in s_ndcg]}}}
        Path(args.gains_out).write_text(json.dumps({"seed": args.seed, "bundle": str(bundle), "protocol": "liked",
                                                    "machine": row["machine"], "runs": [run]}) + "\n")
        print(f"wrote {args.gains_out}")


if __name__ == "__main__":
    main()
