"""MovieLens-1M learning curves of `chatrec finetune` runs, from `chatrec eval` result files, as one plot.

Each series is one training run scored at its snapshots (`--save-minutes`) and at the end; each
point is a `chatrec eval` result file of one model on one set of users. Baselines are drawn as
horizontal lines. Nothing is scored here: this only gathers files that `chatrec eval` wrote.

    python benchmarks/ml1m_curve.py \\
        --series "2 layers, 150 min=37.5:1407:A.json,75:2810:B.json,150:5600:C.json" \\
        --line "SASRec (33 epochs)=benchmarks/results/ml1m_sasrec_liked.json:sasrec" \\
        --out benchmarks/results/ml1m_curve_150min          # writes .json and .png

A series' points are MINUTES:STEPS:FILE; every file of a series must score the same users (the
plot stops otherwise), so its shape is read on one sample.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ml1m_baselines import check_same_split, llm_system  # benchmarks/ is sys.path[0] when run as a script

METRIC = "ndcg@10"


def parse_series(spec: str) -> tuple[str, list[tuple[float, int, str]]]:
    name, sep, points = spec.partition("=")
    if not sep or not points:
        raise SystemExit(f"--series takes NAME=MINUTES:STEPS:FILE,..., got {spec!r}")
    out = []
    for point in points.split(","):
        minutes, steps, path = point.split(":", 2)
        out.append((float(minutes), int(steps), path))
    return name, sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", action="append", required=True, metavar="NAME=MINUTES:STEPS:FILE,...")
    ap.add_argument("--line", action="append", default=[], metavar="NAME=FILE:SYSTEM")
    ap.add_argument("--out", required=True, help="Path without suffix: writes OUT.json and OUT.png.")
    args = ap.parse_args()

    series: dict[str, list[dict[str, Any]]] = {}
    for spec in args.series:
        name, points = parse_series(spec)
        first_split = None
        for minutes, steps, path in points:
            result = json.loads(Path(path).read_text())
            row = result[llm_system(result, path)]
            first_split = first_split or result["split"]
            check_same_split(first_split, result["split"], path)  # one series, one set of users
            series.setdefault(name, []).append({"minutes": minutes, "steps": steps, "users": row.get("users"),
                                                METRIC: row[METRIC], "hr@10": row["hr@10"], "file": path})
    lines = {}
    for spec in args.line:
        name, _, rest = spec.partition("=")
        path, _, system = rest.rpartition(":")
        lines[name] = {METRIC: json.loads(Path(path).read_text())[system][METRIC], "file": path, "system": system}

    print("| series | minutes | steps | users | NDCG@10 | HR@10 |\n|---|---|---|---|---|---|")
    for name, curve in series.items():
        for p in curve:
            print(f"| {name} | {p['minutes']:g} | {p['steps']:,} | {p['users']} | {p[METRIC]:.4f} | {p['hr@10']:.4f} |")
    for name, line in lines.items():
        print(f"| {name} | | | | {line[METRIC]:.4f} | |")

    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"series": series, "lines": lines}, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in series.items():
        ax.plot([p["minutes"] for p in curve], [p[METRIC] for p in curve], marker="o", label=name)
        for p in curve:
            ax.annotate(f"{p['steps']:,}", (p["minutes"], p[METRIC]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
    for i, (name, line) in enumerate(lines.items()):
        ax.axhline(line[METRIC], linestyle="--", color=f"C{len(series) + i}", label=name)
    ax.set_xlabel("training minutes on 2 CPU cores (points labelled with steps)")
    ax.set_ylabel("NDCG@10 (test, our protocol)")
    ax.set_title("MovieLens-1M: the LLM's learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
