"""Beam vs best-first search, and the last SID level scored by the model or by a prior: HR@10,
NDCG@10, latency.

Scores the bundle's final model (export/) on every ML-100k test user with the same split, cases
and constrained retrieval as `chatrec eval`, once per variant, in one process:

    .venv/bin/python benchmarks/search_compare.py --bundle BUNDLE [--variants beam,prior] [--split valid]
        [--prior-exponents 0,0.5,1] [--sequence-events N] [--beam-width W]

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


VARIANTS = {  # key: (name, search, last level)
    "beam": ("beam", "beam", "model"),
    "best_first": ("best-first", "best_first", "model"),
    "prior": ("beam, last level from the popularity-order prior", "beam", "prior"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated, of: {', '.join(VARIANTS)}.")
    ap.add_argument("--engine", default="auto", help="As `chatrec eval --engine` (auto: what `chatrec serve` serves).")
    ap.add_argument("--split", choices=("test", "valid"), default="test",
                    help="Score the test targets, or the validation targets (to choose settings without the test set).")
    ap.add_argument("--sequence-events", type=int, default=None,
                    help="History events in the prompt (default: one training window's worth).")
    ap.add_argument("--beam-width", type=int, default=None, help="Beams kept per level (default: 2k = 20).")
    ap.add_argument("--prior-exponents", default="0.5",
                    help="prior variant: comma-separated exponents of the index prior (index d weighs (d+1)^-a).")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_compare.json"))
    args = ap.parse_args()
    import pandas as pd

    from chatrec import metrics
    from chatrec.bundle import Bundle
    from chatrec.evaluation import (
        Catalog,
        EvalConfig,
        leave_last_out,
        make_system,
        sample_cases,
        score_lists,
        target_ranks,
    )

    bundle = Bundle(args.bundle)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    config = EvalConfig(systems=("llm",), max_users=args.max_users, engine=args.engine)
    catalog = Catalog(pd.read_parquet(bundle.require("catalog.parquet")))
    split = leave_last_out(pd.read_parquet(bundle.require("interactions.parquet")),
                           target_actions=config.target_actions, known_items=catalog.ids)
    cases = sample_cases(split.test if args.split == "test" else split.valid, config.max_users, config.seed)
    system = make_system("llm", bundle, config)
    system.fit(split, catalog)
    if args.sequence_events:
        system.rec.sequence_events = args.sequence_events
    if args.beam_width:
        recommend = system.rec.recommend
        system.rec.recommend = lambda history, k, **kw: recommend(history, k, beam_width=args.beam_width, **kw)
    rows = []
    first = None  # the first variant's per-user NDCG@10
    runs = [(key, float(a)) for key in wanted
            for a in (args.prior_exponents.split(",") if VARIANTS[key][2] == "prior" else ["1"])]
    for key, exponent in runs:
        name, search, last_level = VARIANTS[key]
        if last_level == "prior":
            name = f"{name} (exponent {exponent:g})"
        system.rec.prior_exponent = exponent
        system.rec.search = search
        system.rec.last_level = last_level
        t0 = time.perf_counter()
        recs = system.recommend(cases, 10)
        ms = (time.perf_counter() - t0) * 1000 / len(cases)
        out = score_lists(recs, cases, catalog, (10,))
        gains = metrics.ndcg_gains(target_ranks(recs, cases, 10), 10)
        if first is None:
            first = gains
        else:  # the paired difference to the first variant, with its 95% interval over users
            vs = metrics.paired_bootstrap(gains, first)
            out["vs_first"] = {key: round(vs[key], 4) for key in ("diff", "diff_low", "diff_high")}
        rows.append({"variant": name, "engine": args.engine, "split": args.split,
                     "sequence_events": system.rec.sequence_events, "beam_width": args.beam_width or 20, "hr@10": round(out["hr@10"], 4), "ndcg@10": round(out["ndcg@10"], 4),
                     "ms_per_user": round(ms, 1), "users": len(cases),
                     **({"ndcg@10_vs_first": out["vs_first"]} if "vs_first" in out else {})})
        print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print("| variant | HR@10 | NDCG@10 | vs the first (95% CI) | ms per user |\n|---|---|---|---|---|")
    for r in rows:
        vs = r.get("ndcg@10_vs_first")
        cell = f"{vs['diff']:+.4f} ({vs['diff_low']:+.4f}, {vs['diff_high']:+.4f})" if vs else ""
        print(f"| {r['variant']} | {r['hr@10']} | {r['ndcg@10']} | {cell} | {r['ms_per_user']} |")


if __name__ == "__main__":
    main()
