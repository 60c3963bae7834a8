"""Arms of `chatrec finetune --reading events` side by side on one bundle's validation users.

Each arm is a set of `chatrec finetune` options. Every arm trains from the same bundle (its import,
SID fit and extended model), one after the other so each has the cores to itself, and the table
gives what the run itself scored on its validation users: the last step, the served weights (the
tail average when on) and the served score with the popularity prior chosen on those users, with
the steps, passes, throughput and peak RSS. No test user is scored.

    .venv/bin/python benchmarks/events_sweep.py --bundle B --out benchmarks/results/X.json \
        --arm "e3=--epochs 3" --arm "e6-d4=--epochs 6 --dropout 0.4" [--seed 0]

Each arm runs in a copy of B (B-sweep/NAME, the model linked, not copied) and its manifest is kept
there; B itself is not changed. Arms already in --out are skipped, so a stopped sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package
from benchmarks.sequence_recipe import TRAINING_OUTPUTS  # noqa: E402


def arm_bundle(base: Path, name: str) -> Path:
    """A fresh bundle for one arm: the base without its training outputs, as `sequence_recipe.untrained_copy`
    makes, but kept (an arm's model may be exported and served) and with the extended model linked, not
    copied (0.5 GB an arm; finetune only reads it)."""
    out = base.parent / f"{base.name}-sweep" / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns(*TRAINING_OUTPUTS, "model", "*.log"))
    (out / "model").symlink_to((base / "model").resolve())
    return out


def run_arm(base: Path, name: str, options: str, seed: int, eval_users: int, chatrec: str) -> dict[str, Any]:
    bundle = arm_bundle(base, name)
    cmd = [chatrec, "finetune", "--bundle", str(bundle), "--reading", "events", "--eval-users", str(eval_users),
           "--seed", str(seed), "--quiet", *shlex.split(options)]
    t0 = time.perf_counter()
    with open(bundle / "finetune.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"arm {name}: `{shlex.join(cmd)}` exited {done.returncode}; see {bundle / 'finetune.log'}")
    stage = json.loads((bundle / "manifest.json").read_text())["stages"]["finetune"]
    c = stage["counts"]
    last = stage.get("snapshots", {}).get("seq-last", {})
    return {"options": options, "bundle": str(bundle), "wall_s": round(time.perf_counter() - t0, 1),
            "steps": c["steps"], "epochs_seen": round(c["epochs_seen"], 2), "train_minutes": c["train_minutes"],
            "events_per_s": round(c["events_per_s"]), "peak_rss_mb": round(c["peak_rss_mb"]),
            "users": c.get("valid_users"), "valid_ndcg@10_last": last.get("ndcg@10"),
            "valid_ndcg@10": c.get("valid_ndcg@10"), "valid_ndcg@10_served": c.get("valid_ndcg@10_served"),
            "popularity_weight": c.get("popularity_weight"),
            "valid_ndcg@10_by_popularity_weight": c.get("valid_ndcg@10_by_popularity_weight")}


def table(arms: dict[str, dict[str, Any]]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    rows = ["| arm | options | steps | passes | last step | served weights | with prior (w) | events/s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in arms.items():
        rows.append(f"| {name} | `{r['options']}` | {r['steps']} | {r['epochs_seen']} | {f(r['valid_ndcg@10_last'])} | "
                    f"{f(r['valid_ndcg@10'])} | {f(r['valid_ndcg@10_served'])} ({r['popularity_weight']}) | "
                    f"{r['events_per_s']} | {r['peak_rss_mb']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path, help="A bundle with its SIDs fitted and tokenizer extended.")
    ap.add_argument("--arm", action="append", required=True, help="NAME=OPTIONS for `chatrec finetune`.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-users", type=int, default=3000, help="Seeded validation users (all when fewer).")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--chatrec", default=str(REPO / ".venv" / "bin" / "chatrec"))
    args = ap.parse_args()
    for name, _ in (a.split("=", 1) for a in args.arm):
        if not name or "/" in name:
            raise SystemExit(f"--arm {name!r}: give NAME=OPTIONS with a plain NAME")
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.update({"bundle": str(args.bundle), "seed": args.seed, "split": "valid",
                   "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"})
    arms = result.setdefault("arms", {})
    for name, options in (a.split("=", 1) for a in args.arm):
        if name in arms and arms[name]["options"] == options:
            print(f"{name}: kept from {args.out}", file=sys.stderr)
            continue
        print(f"{name}: chatrec finetune {options}", file=sys.stderr, flush=True)
        arms[name] = run_arm(args.bundle, name, options, args.seed, args.eval_users, args.chatrec)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(table({name: arms[name]}).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(arms))


if __name__ == "__main__":
    main()
