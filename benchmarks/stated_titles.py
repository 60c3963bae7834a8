"""Stated titles over HTTP: a person names 1 or 3 films they loved and asks what to watch next.

For each held-out user (the leave-last-out split of `http_eval.py`, from the bundle's raw files),
the user's N most recent liked input items are the stated titles. Two served paths are asked:

- chat: `POST /v1/chat/completions` with one user message naming the titles the way a person
  types them ("I loved The Usual Suspects, Heat and Fargo. What should I watch next?": no year,
  the article in front), and `chatrec: {"k": 10}`; the answer's `chatrec.items` are the ranking;
- retrieval: `POST /v1/recommendations` with the N items as the history (the API path).

Beside them, on the same users, from the same N items only: item-kNN (chatrec's baseline, fitted on
the split's training interactions) and popularity. Every system leaves out the N stated items.
Prints NDCG@10 / HR@10, each system's NDCG@10 against item-kNN's with a paired 95% bootstrap
interval, and how often the chat understood every stated title.

    .venv/bin/chatrec serve --bundle BUNDLE &
    .venv/bin/python benchmarks/stated_titles.py --bundle BUNDLE [--titles 1,3] [--max-users N]

Writes benchmarks/results/stated_titles_<label>.json.

A served chat reads co-occurrence from the bundle's whole log, test targets included, while the
item-kNN here learns from the training split only: this measures the served path as users get it,
but it flatters the chat against item-kNN. `chatrec eval --stated-titles 1,3 --systems itemknn,chat`
gives both the same training rows.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path[0] = str(HERE.parent)  # the repo (chatrec's item-kNN baseline), not benchmarks/
sys.path.append(str(HERE))
from http_eval import K, gains, ratio_interval, server_args, split_log  # noqa: E402

RESULTS = HERE / "results"
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<art>The|A|An)$")


def typed(title: str) -> str:
    """How a person types a MovieLens title: `"Usual Suspects, The (1995)"` -> `"The Usual Suspects"`."""
    title = _YEAR.sub("", title).strip()
    m = _ARTICLE.match(title)
    return f"{m['art']} {m['rest']}" if m else title


def message(titles: list[str]) -> str:
    names = titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]
    return f"I loved {names}. What should I watch next?"


def main() -> None:
    ap = server_args(__doc__)
    ap.add_argument("--titles", default="1,3", help="Comma-separated numbers of stated titles.")
    ap.add_argument("--max-users", type=int, default=None, help="First N users by id (default: all).")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--label", default="server")
    args = ap.parse_args()

    from chatrec.baselines.itemknn import ItemKNN

    bundle = Path(args.bundle)
    catalog = pd.read_parquet(bundle / "catalog.parquet")
    titles = dict(zip(catalog["item_id"].astype(str), catalog["title"].astype(str), strict=True))
    log = pd.read_parquet(bundle / "interactions.parquet")
    log = log[log["item_id"].astype(str).isin(titles)]
    cases, train = split_log(log, args.split)
    cases = cases[: args.max_users] if args.max_users else cases
    ids = sorted(titles)
    index = {i: n for n, i in enumerate(ids)}
    knn = ItemKNN().fit([[index[i] for i in g["item_id"].astype(str)] for _, g in train.groupby("user_id")], len(ids))
    order = train["item_id"].astype(str).value_counts().index.tolist()
    order += sorted(set(ids) - set(order))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    client = httpx.Client(base_url=args.url, headers=headers, timeout=300)
    report: dict[str, Any] = {"label": args.label, "split": args.split, "bundle": str(bundle),
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": {}}
    print("| titles | system | users | HR@10 | NDCG@10 | x item-kNN NDCG@10 (95% CI) | all titles understood | p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.titles.split(",")):
        usable = []
        for case in cases:
            liked = list(dict.fromkeys(i for i, a in reversed(case["history"]) if a == "like"))[:n]
            if len(liked) == n:
                usable.append((case, liked[::-1]))
        users = [c for c, _ in usable]

        def chat(item: tuple[dict[str, Any], list[str]]) -> tuple[list[str], bool, float]:
            _, stated = item
            body = {"model": "chatrec", "messages": [{"role": "user", "content": message([typed(titles[i])
                                                                                           for i in stated])}],
                    "chatrec": {"k": K}}
            t0 = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            extra = r.json()["chatrec"]
            liked = {e["item_id"] for e in (extra.get("state") or {}).get("liked", [])}
            return [it["item_id"] for it in extra["items"]], set(stated) <= liked, time.perf_counter() - t0

        def retrieve(item: tuple[dict[str, Any], list[str]]) -> tuple[list[str], bool, float]:
            _, stated = item
            body = {"history": [{"item_id": i, "action": "like"} for i in stated], "k": K, "exclude_item_ids": stated}
            t0 = time.perf_counter()
            r = client.post("/v1/recommendations", json=body)
            r.raise_for_status()
            return [it["item_id"] for it in r.json()["items"]], True, time.perf_counter() - t0

        scores = knn.score([[index[i] for i in stated] for _, stated in usable])
        for row, (_, stated) in zip(scores, usable, strict=True):
            row[[index[i] for i in stated]] = -np.inf
        knn_top = [[ids[j] for j in np.argsort(-row, kind="stable")[:K]] for row in scores]
        pop_top = [[i for i in order if i not in set(stated)][:K] for _, stated in usable]
        k_ndcg, _ = gains(knn_top, users)
        run: dict[str, Any] = {"users": len(users)}
        for name, fn in (("chat", chat), ("retrieval", retrieve)):
            with ThreadPoolExecutor(args.concurrency) as pool:
                answers = list(pool.map(fn, usable))
            ndcg, hr = gains([a for a, _, _ in answers], users)
            lo, hi = ratio_interval(ndcg, k_ndcg)
            understood = float(np.mean([u for _, u, _ in answers]))
            p50 = round(statistics.median(t for _, _, t in answers) * 1000, 1)
            run[name] = {"ndcg@10": round(float(ndcg.mean()), 4), "hr@10": round(float(hr.mean()), 4),
                         "x_itemknn": round(float(ndcg.mean() / max(k_ndcg.mean(), 1e-12)), 3),
                         "x_itemknn_95ci": [round(lo, 3), round(hi, 3)], "understood": round(understood, 4),
                         "p50_ms": p50}
            print(f"| {n} | {args.label} {name} | {len(users)} | {hr.mean():.4f} | {ndcg.mean():.4f} | "
                  f"{run[name]['x_itemknn']:.2f} ({lo:.2f}-{hi:.2f}) | {understood:.1%} | {p50} |")
        for name, top in (("itemknn", knn_top), ("popularity", pop_top)):
            ndcg, hr = gains(top, users)
            run[name] = {"ndcg@10": round(float(ndcg.mean()), 4), "hr@10": round(float(hr.mean()), 4)}
            ratio = ndcg.mean() / max(k_ndcg.mean(), 1e-12)
            print(f"| {n} | {name} (same {n} items) | {len(users)} | {hr.mean():.4f} | {ndcg.mean():.4f} | "
                  f"{ratio:.2f} | | |")
        report["runs"][str(n)] = run
    out = RESULTS / f"stated_titles_{args.label}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
