"""Where a sequence-recipe training step spends its time, and the tokens/s of each trunk depth.

Runs the step `chatrec finetune` runs (`finetune.rows_model.sequence_backward` on a batch of the
bundle's own windows, then AdamW), on the bundle's extended model cut to each `--layers` depth, in
one process, one after another: a few warm-up steps, then `--steps` timed ones. With `--profile`,
the first depth's steps also go through torch's profiler and the operators that took the most time
are printed (matmuls against attention against the rest: what a faster kernel could buy).

    .venv/bin/python benchmarks/train_step_profile.py --bundle BUNDLE [--layers 1,2,4] [--steps 20] [--profile]

Writes benchmarks/results/train_step_profile.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)


def train_step(rm: Any, opt: Any, windows: list[list[int]], rng: random.Random, batch_size: int, bf16: bool,
               head_rows_multiple: int) -> int:
    """One training step as `chatrec finetune` takes it on a sequence batch; returns its tokens."""
    import torch

    from finetune import rows_model as rmod

    batch = [windows[rng.randrange(len(windows))] for _ in range(batch_size)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    rmod.sequence_backward(rm, batch, 0, "cpu", None, autocast, head_rows_multiple)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return sum(len(w) for w in batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="A bundle after `chatrec data build` (train/sequences.jsonl).")
    ap.add_argument("--layers", default="1,2", help="Comma-separated trunk depths to time.")
    ap.add_argument("--steps", type=int, default=20, help="Timed steps per depth (after 5 warm-up steps).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--windows", type=int, default=2000, help="Windows read from the bundle to draw batches from.")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    ap.add_argument("--profile", action="store_true", help="Profile 5 steps of the first depth by operator.")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_step_profile.json"))
    args = ap.parse_args()

    import torch

    from chatrec.bundle import Bundle
    from finetune.data import read_jsonl
    from finetune.sequence import SequenceConfig, optimizer_groups, recipe_model, tokenize_windows, use_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = Bundle(args.bundle)
    seq_path = bundle.require("train") / "sequences.jsonl"
    rows = read_jsonl(seq_path)[:args.windows]
    bf16 = use_bf16("auto", "cpu")
    head_rows_multiple = SequenceConfig().head_rows_multiple
    depths: dict[str, dict[str, float]] = {}
    results: dict[str, Any] = {"bundle": str(bundle.root), "batch_size": args.batch_size, "bf16": bf16,
                               "threads": torch.get_num_threads(), "depths": depths}
    print(f"{len(rows)} windows of {seq_path}, batch {args.batch_size}, bf16 {bf16}, "
          f"{torch.get_num_threads()} threads")
    print("| layers | tokens/s | s/step | x the first |\n|---|---|---|---|")
    first_rate = None
    for n, layers in enumerate(int(x) for x in args.layers.split(",")):
        torch.manual_seed(0)
        cfg = SequenceConfig(keep_layers=layers)  # the default recipe at this depth
        rm, _peft, tokenizer, token_map = recipe_model(bundle.require("model"), cfg)
        windows = tokenize_windows(rows, tokenizer, set(token_map.all_ids()), str(seq_path))
        opt = torch.optim.AdamW(optimizer_groups(rm, cfg))

        step = partial(train_step, rm, opt, windows, random.Random(0), args.batch_size, bf16, head_rows_multiple)
        for _ in range(5):
            step()
        t0 = time.perf_counter()
        tokens = sum(step() for _ in range(args.steps))
        seconds = time.perf_counter() - t0
        rate = tokens / seconds
        first_rate = first_rate or rate
        depths[str(layers)] = {"tokens_per_s": rate, "s_per_step": seconds / args.steps}
        print(f"| {layers} | {rate:,.0f} | {seconds / args.steps:.3f} | {rate / first_rate:.2f} |")
        if args.profile and n == 0:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    step()
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events)
            top = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:8]]
            results["profile"] = {"layers": layers, "top_ops": top}
            print(f"\nself CPU time by operator, {layers} layers, 5 steps:")
            for t in top:
                print(f"  {t['share']:6.1%}  {t['op']}")
            print()
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
