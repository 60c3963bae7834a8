"""LoRA at full depth against the default shallow full finetune: NDCG@10 per CPU minute and the
English of model-written chat turns (issue 29). Reads two bundles that were trained side by side,
exported and evaluated; writes a markdown table and `benchmarks/results/lora_vs_shallow.json`.

    # side by side, same wall minutes, one thread each, started together (so both see the same load)
    OMP_NUM_THREADS=1 chatrec finetune --bundle A --keep-layers 4 --max-minutes 50 --threads 1 --eval-users 0 &
    OMP_NUM_THREADS=1 chatrec finetune --bundle B --lora --full-depth --rows-steps 5 --warmup-steps 5 \\
        --max-minutes 50 --threads 1 --eval-users 0 &
    # CPU seconds of each process (user + sys, `ps -o times`), sampled every 20 s into a log
    chatrec export --bundle A; chatrec export --bundle B
    chatrec eval --bundle A --systems llm --no-conversational; likewise B
    .venv/bin/python benchmarks/lora_vs_shallow.py --bundle shallow=A --bundle lora=B \\
        --cpu-seconds shallow=S1 --cpu-seconds lora=S2

The chat samples are turns the model writes itself (`"chatrec": {"mode": "model"}`, as the server
answers them: the transformers engine, greedy, SID spans constrained to the catalog and shown as
titles), for three fixed requests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package

REQUESTS = (
    "I loved Star Wars and Raiders of the Lost Ark. What should I watch next, and why?",
    "Recommend a funny movie for a family evening.",
    "What is a good thriller from the 1990s?",
)


def loss_curve(bundle: Path, every_min: float = 10.0) -> list[dict[str, float]]:
    """Mean sequence-step loss over each `every_min`-minute span of the train log."""
    log = [json.loads(x) for x in (bundle / "checkpoints" / "train_log.jsonl").read_text().splitlines() if x]
    out = []
    span = 0
    while True:
        rows = [r["loss"] for r in log if r["kind"] == "sequence" and span * every_min * 60 <= r["elapsed_s"]
                < (span + 1) * every_min * 60]
        if not rows:
            break
        out.append({"until_min": (span + 1) * every_min, "steps": len(rows), "mean_loss": sum(rows) / len(rows)})
        span += 1
    return out


def chat_samples(bundle: Path) -> list[dict[str, Any]]:
    from serve.protocol import ChatCompletionRequest
    from serve.service import ChatService, ServeConfig

    svc = ChatService.build(ServeConfig(bundle=str(bundle), engine="transformers"))
    try:
        out = []
        for text in REQUESTS:
            req = ChatCompletionRequest.model_validate({
                "model": svc.model_ids[0], "max_tokens": 80, "temperature": 0,
                "messages": [{"role": "user", "content": text}], "chatrec": {"mode": "model"}})
            reply = svc.chat(req)
            out.append({"request": text, "answer": reply["choices"][0]["message"]["content"],
                        "items": [i["title"] for i in reply["chatrec"]["items"]]})
        return out
    finally:
        svc.close()


def summary(label: str, bundle: Path, cpu_seconds: float, every_min: float = 10.0) -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text())["stages"]
    counts = manifest["finetune"]["counts"]
    llm = json.loads((bundle / "eval.json").read_text())["llm"]
    cpu_min = cpu_seconds / 60
    return {
        "label": label, "bundle": str(bundle), "lora": counts.get("lora", False), "layers": counts["layers"],
        "steps": counts["steps"], "train_minutes": counts["train_minutes"], "cpu_minutes": round(cpu_min, 2),
        "trained_params": counts.get("trained_params"), "tokens_per_s": counts["tokens_per_s"],
        "first_loss": counts["first_loss"], "final_loss": counts["final_loss"], "peak_rss_mb": counts["peak_rss_mb"],
        "users": llm["users"], "engine": llm.get("engine"), "hr@10": llm["hr@10"], "ndcg@10": llm["ndcg@10"],
        "ndcg@10_per_cpu_minute": llm["ndcg@10"] / cpu_min if cpu_min else None,
        "loss_curve": loss_curve(bundle, every_min), "chat": chat_samples(bundle),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, help="LABEL=BUNDLE (trained, exported, evaluated)")
    ap.add_argument("--cpu-seconds", action="append", required=True, help="LABEL=SECONDS of training CPU time")
    ap.add_argument("--every-min", type=float, default=10.0, help="span of each point of the loss curve, minutes")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lora_vs_shallow.json"))
    args = ap.parse_args()
    bundles = dict(x.split("=", 1) for x in args.bundle)
    cpu = {k: float(v) for k, v in (x.split("=", 1) for x in args.cpu_seconds)}
    rows = [summary(label, Path(path), cpu[label], args.every_min) for label, path in bundles.items()]
    print("| run | layers | steps | CPU min | tokens/s | loss first -> last | NDCG@10 | HR@10 | NDCG@10 per CPU min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind = f"LoRA r16, {r['layers']} layers" if r["lora"] else f"full finetune, {r['layers']} layers"
        print(f"| {r['label']} ({kind}) | {r['layers']} | {r['steps']} | {r['cpu_minutes']:.1f} | "
              f"{r['tokens_per_s']:.0f} | {r['first_loss']:.2f} -> {r['final_loss']:.2f} | {r['ndcg@10']:.4f} | "
              f"{r['hr@10']:.4f} | {r['ndcg@10_per_cpu_minute']:.5f} |")
    for r in rows:
        print(f"\n{r['label']}: loss per {args.every_min:g} min {[round(c['mean_loss'], 3) for c in r['loss_curve']]}")
        for c in r["chat"]:
            print(f"  > {c['request']}\n    {c['answer']!r}")
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
