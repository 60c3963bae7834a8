"""Side-by-side summary of `chatrec finetune` runs from their training logs (`checkpoints/train_log.jsonl`).

For each bundle: the build's window, the run's batch settings, steps, minutes, tokens/s, how full
the padded batches were (real tokens / token slots after padding, the `padded` field of each
logged step), the largest resident memory the loop logged and the sequence loss over the last
steps. Used to compare recipes that ran side by side on the same machine (ratios, not absolutes):

    python benchmarks/train_logs.py /tmp/w256 /tmp/w800 [--tail 200] [--out summary.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)


def summarise(root: str, tail: int) -> dict[str, Any]:
    from chatrec.bundle import Bundle
    from finetune.data import read_jsonl
    from finetune.sequence import CHECKPOINTS, TRAIN_LOG

    bundle = Bundle(root)
    log = bundle.path(CHECKPOINTS, TRAIN_LOG)
    if not log.exists():
        raise SystemExit(f"train_logs.py: {log} does not exist; run `chatrec finetune --bundle {root}` first")
    rows = read_jsonl(log)
    if not rows:
        raise SystemExit(f"train_logs.py: {log} holds no steps")
    seq = [r for r in rows if r["kind"] == "sequence"]
    last = seq[-tail:]
    build = (bundle.stage("build") or {}).get("config", {})
    config = (bundle.stage("finetune") or {}).get("config", {})
    seconds = rows[-1]["elapsed_s"]
    padded = [r for r in seq if "padded" in r]  # logs written before the field existed lack it
    return {
        "bundle": root, "window_tokens": build.get("window_tokens"), "batch_size": config.get("batch_size"),
        "group_by_length": config.get("group_by_length"), "steps": len(rows), "sequence_steps": len(seq),
        "minutes": round(seconds / 60, 1), "tokens_per_s": round(sum(r["tokens"] for r in rows) / seconds),
        "sequence_tokens_per_step": round(sum(r["tokens"] for r in seq) / len(seq)),
        "fill": round(sum(r["tokens"] for r in padded) / sum(r["padded"] for r in padded), 3) if padded else None,
        "peak_logged_rss_gib": round(max(r["rss_mb"] for r in rows) / 1024, 2),
        f"loss_last_{len(last)}": round(sum(r["loss"] * r["targets"] for r in last) / sum(r["targets"] for r in last), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--tail", type=int, default=200, help="Sequence steps the final loss is averaged over.")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    runs = [summarise(b, args.tail) for b in args.bundles]
    keys = list(runs[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for run in runs:
        print("| " + " | ".join(str(run.get(k)) for k in keys) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
