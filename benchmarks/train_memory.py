"""Resident memory of the sequence recipe over a run: the output head's rows padded or not.

    .venv/bin/python benchmarks/train_memory.py --bundle BUNDLE [--minutes 6] [--multiples 256,0]
        [--preload LIB] [--out JSON]

BUNDLE is an ML-100k bundle after `chatrec data build` (copied; the original is not touched). Each
variant runs `chatrec finetune --keep-layers 4 --max-minutes M --dropout 0.1 --eval-users 0
--head-rows-multiple N` (today's recipe) as its own process, one after the other, so run it on an
idle machine. Read back: the process's peak RSS (the stage record's `ru_maxrss`), tokens per second,
and the per-step RSS that the train log records before each trim, as the highest value per 50 steps:
a rising row is memory that the run keeps and does not use. `--preload LIB` runs every variant with
`LD_PRELOAD=LIB` (another allocator, e.g. mimalloc). Prints a table and writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package
from benchmarks.sequence_recipe import run, untrained_copy  # noqa: E402

WINDOW = 50  # steps per RSS row (the recipe trims freed heap every 50 steps)


def measure(bundle: Path, minutes: float, multiple: int, preload: str | None) -> dict[str, Any]:
    work, copy = untrained_copy(bundle, f"chatrec-mem-{multiple}-")
    try:
        run(copy, ["--keep-layers", "4", "--max-minutes", str(minutes), "--dropout", "0.1", "--eval-users", "0",
                   "--head-rows-multiple", str(multiple)], env={"LD_PRELOAD": preload} if preload else None)
        counts = json.loads((copy / "manifest.json").read_text())["stages"]["finetune"]["counts"]
        log = [json.loads(x) for x in (copy / "checkpoints" / "train_log.jsonl").read_text().splitlines() if x]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rss = [r["rss_mb"] for r in log]
    per_window = [max(rss[i:i + WINDOW]) for i in range(0, len(rss), WINDOW)]
    return {"head_rows_multiple": multiple, "preload": preload, "minutes": minutes, "steps": len(log),
            "tokens_per_s": round(counts["tokens_per_s"], 1), "final_loss": round(counts["final_loss"], 4),
            "peak_rss_mib": round(counts["peak_rss_mb"], 1), "rss_max_per_50_steps_mib": per_window,
            "rss_per_step_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--multiples", default="256,0", help="head_rows_multiple per variant, comma-separated (0 = off)")
    ap.add_argument("--preload", default=None, help="LD_PRELOAD for every variant (another malloc)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_memory.json")
    args = ap.parse_args()
    rows = [measure(args.bundle, args.minutes, int(m), args.preload) for m in args.multiples.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(f"\n{args.minutes:g} training minutes per variant, one after the other"
          + (f", LD_PRELOAD={args.preload}" if args.preload else ""))
    print("| head rows multiple | steps | tokens/s | peak RSS (process) | highest RSS, first 50 steps | "
          "highest RSS, last 50 steps | final loss |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        w = r["rss_max_per_50_steps_mib"]
        print(f"| {r['head_rows_multiple'] or 'off'} | {r['steps']} | {r['tokens_per_s']:,.0f} | "
              f"{r['peak_rss_mib'] / 1024:.2f} GiB | {w[0] / 1024:.2f} GiB | {w[-1] / 1024:.2f} GiB | "
              f"{r['final_loss']:.3f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.plot(r["rss_per_step_mib"], lw=0.8, label=f"head rows multiple {r['head_rows_multiple'] or 'off'}")
    ax.set_xlabel("step")
    ax.set_ylabel("RSS before the trim (MiB)")
    ax.set_title("sequence recipe, resident memory per step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
