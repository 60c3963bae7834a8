"""Where one system gains or loses against another, user by user: per-user NDCG@10 gains (from
`score_gains.py score` or `http_eval.py --gains-out`) bucketed by what each test case looks like.

Buckets: events in the input that no training window held (the validation target and what followed it),
input length, the target's training popularity, and whether the input's last event is a positive one.

    python benchmarks/gap_buckets.py --bundle B --llm G0.json,G1.json,G2.json \
        --baselines benchmarks/results/ml1m_gains_liked_baselines.json [--against sasrec]

With several LLM files (seeds of one bundle layout: the same users), each user's gain is their mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from score_gains import aligned, pick  # the run picking and pairing by user id `score_gains.py report` does

from chatrec.bundle import Bundle
from chatrec.evaluation import TRAINED_PROTOCOL, Catalog, make_split

BUCKETS = {
    "unseen events": ("unseen", [-1, 0, 1, 2, 4, 8, 10**6]),
    "input events": ("hist", [0, 20, 50, 100, 200, 400, 10**6]),
    "target's training events": ("pop", [-1, 50, 200, 500, 1000, 10**7]),
}


def llm_gains(run: dict) -> np.ndarray:
    return np.asarray(next(e for n, e in run["systems"].items() if n.startswith("llm"))["gains"], dtype=float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--llm", required=True, help="Comma-separated gains files of the LLM (seeds: averaged per user).")
    ap.add_argument("--baselines", required=True)
    ap.add_argument("--against", default="sasrec")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    bundle = Bundle(args.bundle)
    catalog = Catalog(pd.read_parquet(bundle.catalog_path))
    inter = pd.read_parquet(bundle.interactions_path)
    split = make_split(inter, TRAINED_PROTOCOL, known_items=catalog.ids)
    pop = split.train["item_id"].astype(str).value_counts()
    trained = split.train.groupby(split.train["user_id"].astype(str)).size()
    runs = [pick(p, "test", "final") for p in args.llm.split(",")]
    users = runs[0]["user_ids"]
    if any(r["user_ids"] != users for r in runs):
        raise SystemExit("gap_buckets.py: the LLM files scored different users")
    base_run = pick(args.baselines, "test", "final")
    base = np.asarray(base_run["systems"][args.against]["gains"], dtype=float)[aligned(base_run, runs[0])]
    cases = {c.user_id: c for c in split.test}
    frame = pd.DataFrame([{
        "unseen": len(cases[u].items) - int(trained.get(u, 0)), "hist": len(cases[u].items),
        "pop": int(pop.get(cases[u].target, 0)), "last_positive": cases[u].actions[-1] == "like",
    } for u in users])
    frame["llm"] = np.mean([llm_gains(r) for r in runs], axis=0)
    frame["base"] = base
    out = {}
    for title, (col, edges) in [*BUCKETS.items(), ("input ends with a positive event", ("last_positive", None))]:
        key = pd.cut(frame[col], edges) if edges else frame[col]
        table = frame.groupby(key, observed=True).agg(users=("llm", "size"), llm=("llm", "mean"), base=("base", "mean"))
        table["ratio"] = table["llm"] / table["base"].clip(lower=1e-12)
        print(f"\n{title}\n| bucket | users | LLM NDCG@10 | {args.against} | LLM / {args.against} |\n|---|---|---|---|---|")
        for idx, r in table.iterrows():
            print(f"| {idx} | {int(r['users'])} | {r['llm']:.4f} | {r['base']:.4f} | {r['ratio']:.3f} |")
        out[title] = {str(k): {c: float(v) for c, v in r.items()} for k, r in table.iterrows()}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
