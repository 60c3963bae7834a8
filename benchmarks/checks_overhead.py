"""Do the request checks change a normal request? Top-10 and latency with and without them, same bundle.

Runs `Recommender.recommend` (transformers engine, in process) for the first N test users' histories
of BUNDLE twice in one process: with the server's cost limits set (`CostLimits` from `ServeConfig`
defaults) and with none, and prints the share of identical top-10 lists and the latency of each.
With `--repo OLD` it instead writes the top-10 lists computed by another checkout (an older commit)
to compare against.

    .venv/bin/python benchmarks/checks_overhead.py --bundle BUNDLE [--users 100] [--repo /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--repo", default=str(REPO), help="checkout whose code computes the lists")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path[0] = args.repo
    import pandas as pd

    from chatrec.recommender import Recommender

    log = pd.read_parquet(Path(args.bundle) / "interactions.parquet").sort_values(["user_id", "timestamp"])
    groups = list(log.groupby("user_id"))[: args.users]
    hists = [list(zip(g["item_id"].astype(str), g["action"].astype(str), strict=True))[:-2] for _, g in groups]
    rec = Recommender.from_bundle(args.bundle, engine="transformers")
    rec.recommend(hists[0], k=10)
    out: dict[str, object] = {"repo": args.repo}
    runs = [("checks", True), ("no_checks", False)] if hasattr(rec, "limits") else [("old", False)]
    for name, checks in runs:
        if hasattr(rec, "limits"):
            from chatrec.recommender import CostLimits
            from serve.service import ServeConfig

            cfg = ServeConfig(bundle=args.bundle, engine="transformers")
            rec.limits = CostLimits(cfg.max_prompt_tokens, cfg.max_beam_tokens, cfg.max_rank_tokens) if checks \
                else CostLimits()
        t0 = time.perf_counter()
        lists = [[r.item_id for r in rec.recommend(h, k=10)] for h in hists]
        out[name] = {"ms_per_user": round((time.perf_counter() - t0) * 1000 / len(hists), 1), "top10": lists}
    Path(args.out).write_text(json.dumps(out) + "\n")
    if "checks" in out:
        a, b = out["checks"]["top10"], out["no_checks"]["top10"]  # type: ignore[index]
        same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
        print(f"identical top-10 with and without the checks: {same:.0%} of {len(a)} users; "
              f"{out['checks']['ms_per_user']} vs {out['no_checks']['ms_per_user']} ms per user")  # type: ignore[index]


if __name__ == "__main__":
    main()
