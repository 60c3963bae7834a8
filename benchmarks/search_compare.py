"""Beam vs best-first search, and the prompt padded to whole KV blocks or not: HR@10, NDCG@10, latency.

Scores the bundle's final model (export/) on every ML-100k test user with the same split, cases
and constrained retrieval as `chatrec eval`, once per variant, in one process:

    .venv/bin/python benchmarks/search_compare.py --bundle BUNDLE

Writes benchmarks/results/search_compare.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_compare.json"))
    args = ap.parse_args()
    import pandas as pd

    from chatrec.bundle import Bundle
    from chatrec.evaluation import Catalog, EvalConfig, leave_last_out, make_system, sample_cases, score_lists

    bundle = Bundle(args.bundle)
    config = EvalConfig(systems=("llm",), max_users=args.max_users)
    catalog = Catalog(pd.read_parquet(bundle.require("catalog.parquet")))
    split = leave_last_out(pd.read_parquet(bundle.require("interactions.parquet")),
                           target_actions=config.target_actions, known_items=catalog.ids)
    cases = sample_cases(split.test, config.max_users, config.seed)
    system = make_system("llm", bundle, config)
    system.fit(split, catalog)
    rows = []
    for name, search, align in (("beam, prompt padded to KV blocks", "beam", True),
                                ("best-first, prompt padded to KV blocks", "best_first", True),
                                ("beam, unpadded prompt", "beam", False)):
        system.rec.search = search
        system.rec.align_history = align
        t0 = time.perf_counter()
        recs = system.recommend(cases, 10)
        ms = (time.perf_counter() - t0) * 1000 / len(cases)
        out = score_lists(recs, cases, catalog, (10,))
        rows.append({"variant": name, "hr@10": round(out["hr@10"], 4), "ndcg@10": round(out["ndcg@10"], 4),
                     "ms_per_user": round(ms, 1), "users": len(cases)})
        print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print("| variant | HR@10 | NDCG@10 | ms per user |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['hr@10']} | {r['ndcg@10']} | {r['ms_per_user']} |")


if __name__ == "__main__":
    main()
