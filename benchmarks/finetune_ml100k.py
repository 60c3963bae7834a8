"""Real finetune run: ML-100k + SmolLM2-135M-Instruct on this CPU (background job, not CI).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune_ml100k.py \
        --bundle /work/bundles/ml100k --steps 36 --test-users 60

Steps (each a `chatrec` command, so the numbers are what a user gets):
  1. unless the bundle already has model/: `chatrec data import movielens-100k`, `chatrec sids fit`,
     `chatrec tokenizer extend` (SmolLM2-135M-Instruct from the embedded GGUF)
  2. `chatrec data build --history-len 10 --max-targets-per-user 8`
  3. `chatrec finetune` (next-item task, batch 8, --steps optimizer steps, 1 torch thread)
  4. HR@10 / NDCG@10 on the first --test-users test users (leave-last-out, seen items excluded),
     constrained top-10 beam search over the trie; loss curve PNG; JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def run(cmd: list[str]) -> float:
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="/work/bundles/ml100k")
    ap.add_argument("--steps", type=int, default=36)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--test-users", type=int, default=60)
    ap.add_argument("--skip-train", action="store_true", help="Only evaluate and plot an existing run.")
    args = ap.parse_args()
    chatrec = [sys.executable, "-m", "chatrec"]
    bundle = Path(args.bundle)
    timings: dict[str, float] = {}
    if not (bundle / "model" / "chatrec_tokens.json").exists():
        timings["import_s"] = run([*chatrec, "data", "import", "movielens-100k", "--out", str(bundle)])
        timings["sids_fit_s"] = run([*chatrec, "sids", "fit", "--bundle", str(bundle)])
        timings["tokenizer_extend_s"] = run([*chatrec, "tokenizer", "extend", "--bundle", str(bundle)])
    if not args.skip_train:
        timings["data_build_s"] = run([*chatrec, "data", "build", "--bundle", str(bundle), "--history-len", "10",
                                       "--max-targets-per-user", "8"])
        timings["finetune_s"] = run([
            *chatrec, "finetune", "--bundle", str(bundle), "--tasks", "next_item", "--max-steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-steps", "3",
            "--eval-every", "12", "--eval-users", "10", "--save-every", "12", "--max-tokens", "384",
            "--threads", "1"])
    evaluate_and_plot(bundle, args, timings)


def evaluate_and_plot(bundle_path: Path, args: argparse.Namespace, timings: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from peft import PeftModel

    from chatrec.bundle import Bundle
    from finetune.recipe import evaluate, read_log, validation_rows
    from tokenizer_ext import load_extended

    torch.set_num_threads(1)
    bundle = Bundle(bundle_path)
    model, tok, token_map = load_extended(bundle.model_dir)
    model = PeftModel.from_pretrained(model, str(bundle.adapter_dir))
    rows = validation_rows(bundle, "test", args.test_users)
    t0 = time.perf_counter()
    test = evaluate(model, tok, token_map, bundle, rows, k=10)
    timings["test_eval_s"] = time.perf_counter() - t0

    log = list(read_log(bundle))
    steps = [r for r in log if "loss" in r]
    evals = [r for r in log if "eval" in r]
    fin = bundle.stage("finetune") or {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss (assistant tokens)")
    ax.set_xlabel("optimizer step (batch 8 conversations)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("chatrec finetune: ML-100k, SmolLM2-135M + LoRA, 2-core CPU")
    if evals:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in evals], [r["eval"]["hr@10"] for r in evals], "o--", color="C1",
                 label="valid HR@10")
        ax2.set_ylabel("valid HR@10")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(RESULTS / "finetune_ml100k_loss.png", dpi=120)
    result = {
        "machine": "2-core CPU (shared), 24 GiB RAM", "python": platform.python_version(),
        "bundle": str(bundle.root), "steps": len(steps), "batch_size": args.batch_size, "lr": args.lr,
        "train_tokens": sum(r["tokens"] for r in steps),
        "train_tokens_per_s": fin.get("counts", {}).get("tokens_per_s"),
        "peak_rss_mb_finetune": fin.get("counts", {}).get("peak_rss_mb"),
        "first_loss": steps[0]["loss"] if steps else None, "final_loss": steps[-1]["loss"] if steps else None,
        "valid_evals": [{"step": r["step"], **r["eval"]} for r in evals],
        "test": test, "timings_s": timings, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (RESULTS / "finetune_ml100k.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
