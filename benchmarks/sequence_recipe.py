"""Training speed and memory: the sequence recipe's default (a shallow full finetune) against `--lora
--full-depth` (LoRA on every layer), same bundle, same run.

    .venv/bin/python benchmarks/sequence_recipe.py --bundle BUNDLE [--lora-steps 4] [--seq-steps 20]

BUNDLE is an ML-100k bundle after `chatrec data build` (it is copied; the original is not touched).
Each recipe runs as the `chatrec finetune` command a user types, one after the other on the idle
machine, and is read back from the stage record (peak RSS of the process, tokens) and its train log.
"Item targets" are the items whose codes the loss supervises: every event of a window after its first
(each next event's item is a target). (Until issue 29 the "lora" arm was the retired conversation-only
LoRA recipe; BENCHMARKS.md's older rows are that recipe.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package


def run(bundle: Path, args: list[str], env: dict[str, str] | None = None) -> None:
    """`chatrec finetune --bundle BUNDLE ARGS` as a user types it, in its own process (`env` added)."""
    cmd = [sys.executable, "-m", "chatrec", "finetune", "--bundle", str(bundle), "--quiet", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})


TRAINING_OUTPUTS = ("checkpoints", "trained", "adapter", "export", "eval*")  # what a finetune run writes or feeds


def untrained_copy(bundle: Path, prefix: str) -> tuple[Path, Path]:
    """(scratch folder, copy of `bundle` in it without training outputs); remove the folder when done."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    copy = work / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns(*TRAINING_OUTPUTS))
    return work, copy


def measure(bundle: Path, recipe: str, steps: int) -> dict[str, Any]:
    work, copy = untrained_copy(bundle, f"chatrec-bench-{recipe}-")
    try:
        lora = ["--lora", "--full-depth"] if recipe == "lora" else []
        run(copy, [*lora, "--max-steps", str(steps), "--eval-users", "0"])
        counts = json.loads((copy / "manifest.json").read_text())["stages"]["finetune"]["counts"]
        log = [json.loads(x) for x in (copy / "checkpoints" / "train_log.jsonl").read_text().splitlines() if x]
        steps_log = [r for r in log if "loss" in r]
        seconds = max(r["elapsed_s"] for r in steps_log)
        tokens = sum(r["tokens"] for r in steps_log)
        per_event = json.loads((copy / "manifest.json").read_text())["stages"]["build"]["counts"]["tokens_per_event"]
        items = sum(r["targets"] for r in steps_log if r["kind"] == "sequence") // per_event
        return {"recipe": recipe, "steps": len(steps_log), "seconds": seconds, "tokens_per_s": tokens / seconds,
                "item_targets": items, "item_targets_per_s": items / seconds,
                "peak_rss_mib": counts["peak_rss_mb"], "layers": counts.get("layers", 30)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--lora-steps", type=int, default=4)
    ap.add_argument("--seq-steps", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sequence_recipe.json"))
    args = ap.parse_args()
    bundle = Path(args.bundle)
    results = [measure(bundle, "lora", args.lora_steps), measure(bundle, "sequence", args.seq_steps)]
    lora, seq = results
    print("| recipe | layers | steps | s | tokens/s | item targets/s | peak RSS MiB |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['layers']} | {r['steps']} | {r['seconds']:.0f} | {r['tokens_per_s']:.0f} | "
              f"{r['item_targets_per_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    ratio = seq["item_targets_per_s"] / max(lora["item_targets_per_s"], 1e-9)
    print(f"\nitem targets/s, sequence / lora: {ratio:.0f}x")
    Path(args.out).write_text(json.dumps({"results": results, "ratio_item_targets_per_s": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
