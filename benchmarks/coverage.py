"""How much of the catalog a served model shows: distinct items over all users' top-10s, and the share
of top-10 slots the 100 most-shown items take, from `benchmarks/http_eval.py` result files (their
`top10`). Seconds, no model.

    python benchmarks/coverage.py --runs benchmarks/results/http_eval_A.json,benchmarks/results/http_eval_B.json \
        [--out benchmarks/results/coverage_X.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def coverage(top10: dict[str, list[str]], head: int = 100) -> dict[str, float]:
    shown = collections.Counter(item for items in top10.values() for item in items)
    slots = sum(shown.values())
    return {"users": len(top10), "distinct_items": len(shown),
            f"share_of_slots_top{head}": sum(c for _, c in shown.most_common(head)) / max(slots, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="Comma-separated http_eval.py result files.")
    ap.add_argument("--out", type=Path, help="Write the rows as JSON here.")
    args = ap.parse_args()
    rows = []
    print("| run | users | NDCG@10 | distinct items in the top-10s | share of slots on the 100 most shown |")
    print("|---|---|---|---|---|")
    for path in args.runs.split(","):
        run = json.loads(Path(path).read_text())
        row = {"file": path, "label": run.get("label"), "ndcg@10": run.get("ndcg@10"), **coverage(run["top10"])}
        rows.append(row)
        print(f"| {row['label']} | {row['users']} | {row['ndcg@10']} | {row['distinct_items']:,} | "
              f"{row['share_of_slots_top100']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps({"what": "catalog coverage of served top-10s (benchmarks/coverage.py)",
                                        "runs": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
