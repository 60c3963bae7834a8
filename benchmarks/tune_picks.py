"""Choose the chat's pick weights (`chatrec.picks.PickConfig`) on validation users, never on test.

The served chat turn (`chatrec.chat_eval.ChatSystem`, the code `/v1/chat/completions` runs) answers
every validation case twice, as `chatrec eval` does: the plain "What should I watch next?" and the
case's conversational request (a genre or a decade its target satisfies). The model's retrieval
does not depend on the weights, so it is computed once per case and cached; each weight setting
then re-runs only the picking. With `--stated 1,3` every setting is also scored on the stated-titles
protocol (`chatrec eval --stated-titles`: the case's N most recent liked titles, told in one
message). Prints HR@10 / NDCG@10 per setting, plain, conversational and stated, with item-kNN (with
the request as a hard filter; from the same N items) on the same users.

    .venv/bin/python benchmarks/tune_picks.py --bundle BUNDLE [--engine vllm] [--stated 1,3] [--grid JSON]

Writes benchmarks/results/tune_picks.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)
RESULTS = REPO / "benchmarks" / "results"

GRID = {"neighbours": (1.5, 3.0), "words": (0.5, 1.0), "model": (0.75, 1.5), "popularity": (0.25, 0.5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--stated", default="", help="Also score the stated-titles protocol for these N (e.g. 1,3).")
    ap.add_argument("--grid", default=None, help='Weights to try, as JSON: {"neighbours": [3, 6], ...} '
                                                 "(default: the module's GRID).")
    ap.add_argument("--out", default=str(RESULTS / "tune_picks.json"))
    args = ap.parse_args()
    grid = {k: tuple(v) for k, v in json.loads(args.grid).items()} if args.grid else GRID
    stated_n = [int(x) for x in args.stated.split(",") if x.strip()]

    import pandas as pd

    from chatrec.bundle import Bundle
    from chatrec.chat_eval import ChatSystem
    from chatrec.evaluation import (
        BaselineSystem,
        Catalog,
        make_constraints,
        make_split,
        sample_cases,
        score_lists,
        stated_cases,
    )

    bundle = Bundle(args.bundle)
    catalog = Catalog(pd.read_parquet(bundle.require("catalog.parquet")))
    split = make_split(pd.read_parquet(bundle.require("interactions.parquet")), "liked", known_items=catalog.ids)
    cases = sample_cases(split.valid, args.max_users, 0)
    cons = make_constraints(cases, catalog, 0)
    pairs = [(c, con) for c, con in zip(cases, cons, strict=True) if con is not None]
    system = ChatSystem("chat", bundle, engine=args.engine)
    system.fit(split, catalog)
    cache: dict[Any, list[str]] = {}
    retrieve = system._retrieve

    def cached(history: list[tuple[str, str]], k: int, request: str | None, include: list[str] | None) -> list[str]:
        key = (tuple(history), k, request, tuple(include) if include is not None else None)
        if key not in cache:
            cache[key] = retrieve(history, k, request, include)
        return cache[key]

    system._retrieve = cached
    knn = BaselineSystem("itemknn", seed=0, progress=False)
    knn.fit(split, catalog)
    knn_conv = knn.recommend([c for c, _ in pairs], 10, [con for _, con in pairs], filtered=True)
    rows = [{"setting": "item-kNN", **{k: round(v, 4) for k, v in score_lists(knn.recommend(cases, 10), cases, catalog,
                                                                          (10,)).items() if "@" in k},
             **{f"conv_{k}": round(v, 4) for k, v in score_lists(knn_conv, [c for c, _ in pairs], catalog, (10,)).items()
                if "@" in k}}]
    stated = {n: stated_cases(cases, n) for n in stated_n}
    for n, few in stated.items():
        rows[0].update({f"stated{n}_{k}": round(v, 4) for k, v in score_lists(knn.recommend(few, 10), few, catalog,
                                                                                (10,)).items() if "@" in k})
    config = system.conversation.picker.config
    for values in itertools.product(*grid.values()):
        for name, value in zip(grid, values, strict=True):
            setattr(config, name, value)
        t0 = time.perf_counter()
        plain = system.recommend(cases, 10)
        conv = system.recommend([c for c, _ in pairs], 10, [con for _, con in pairs])
        row = {"setting": ", ".join(f"{n}={v}" for n, v in zip(grid, values, strict=True)),
               **{k: round(v, 4) for k, v in score_lists(plain, cases, catalog, (10,)).items() if "@" in k},
               **{f"conv_{k}": round(v, 4) for k, v in score_lists(conv, [c for c, _ in pairs], catalog, (10,)).items()
                  if "@" in k}}
        for n, few in stated.items():
            recs, understood = system.recommend_stated(few, 10)
            row.update({f"stated{n}_{k}": round(v, 4) for k, v in score_lists(recs, few, catalog, (10,)).items()
                        if "@" in k}, **{f"stated{n}_understood": round(understood, 4)})
        row["s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(row, flush=True)
    heads = ["HR@10", "NDCG@10", "conv HR@10", "conv NDCG@10", *[f"{n} title(s) NDCG@10" for n in stated]]
    print("| setting | " + " | ".join(heads) + " |\n|---|" + "---|" * len(heads))
    for r in rows:
        cells = [r["hr@10"], r["ndcg@10"], r["conv_hr@10"], r["conv_ndcg@10"], *[r[f"stated{n}_ndcg@10"] for n in stated]]
        print(f"| {r['setting']} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    Path(args.out).write_text(json.dumps({"split": "valid", "users": len(cases), "conversational_users": len(pairs),
                                          "stated_users": {str(n): len(f) for n, f in stated.items()}, "rows": rows},
                                         indent=1) + "\n")
    system.close()


if __name__ == "__main__":
    main()
