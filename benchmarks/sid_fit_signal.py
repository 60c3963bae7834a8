"""Can a cheap signal pick the better SID fit before training? item-kNN through the SID tree.

    nice -n 10 .venv/bin/python benchmarks/sid_fit_signal.py --split-bundle B0 --cases valid B0 B1 B2 ... \\
        [--llm benchmarks/results/seeds_ml100k_valid_layers4.json ...] [--out benchmarks/results/sid_fit_signal_ml100k.json]

Every bundle given shares one catalog and log (the split is made once, from `--split-bundle`) and has
its own `sids.parquet`. item-kNN (the `chatrec eval` baseline, fitted on the training split) scores
each held-out user; its non-negative scores, normalised to sum to one, stand in for a model's
next-item distribution, and are then searched as `chatrec serve` searches the LLM: retrieval's
default beam width (20) over the SID levels (the mass of each prefix is the sum over its items), the
last level from its popularity prior (exponent 0.5). If a fit groups items that the log uses together, fewer targets fall
out of the beam and the prior ranks cells better, so its NDCG@10 is higher. With `--llm` (results
files of `benchmarks/seeds.py`), the signal is set beside each fit's LLM NDCG@10 and their Pearson
and Spearman correlations are printed. The question is whether the signal predicts the trained
model well enough to choose among fits with it; it costs seconds per fit, a training run minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chatrec import metrics
from chatrec.evaluation import BaselineSystem, Catalog, make_split
from chatrec.retrieval import PRIOR_EXPONENT, RetrievalConfig

WIDTH = RetrievalConfig().width  # the beam width retrieval keeps per level by default


def knn_scores(bundle: Path, cases: str) -> tuple[Catalog, np.ndarray, np.ndarray]:
    """item-kNN scores [users, items] of the held-out cases (input items masked) and the target indices."""
    catalog = Catalog(pd.read_parquet(bundle / "catalog.parquet"))
    split = make_split(pd.read_parquet(bundle / "interactions.parquet"), "liked", known_items=catalog.ids)
    knn = BaselineSystem("itemknn", progress=False)
    knn.fit(split, catalog)
    held = split.valid if cases == "valid" else split.test
    histories = [catalog.indices(c.items) for c in held]
    scores = np.asarray(knn.model.score(histories), dtype=np.float64)
    for row, items in enumerate(histories):
        scores[row, items] = -np.inf
    return catalog, scores, np.array([catalog.index[c.target] for c in held])


def tree_ndcg(catalog: Catalog, scores: np.ndarray, targets: np.ndarray, sids: Path) -> float:
    """NDCG@10 of `scores` searched through the SID tree as retrieval searches it (see the module doc)."""
    table = pd.read_parquet(sids)
    codes_of = {str(i): list(c) for i, c in zip(table["item_id"], table["codes"], strict=True)}
    codes = np.array([codes_of[i] for i in catalog.ids])
    if codes.shape[1] != 3:
        raise SystemExit(f"{sids}: expected 2 levels + the disambiguation level, got {codes.shape[1]} codes")
    first = codes[:, 0]
    _, cell = np.unique(codes[:, 0] * 100_000 + codes[:, 1], return_inverse=True)
    prior = (codes[:, 2] + 1.0) ** -PRIOR_EXPONENT
    probs = np.clip(np.where(np.isfinite(scores), scores, 0.0), 0.0, None)
    probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    ranks: list[int | None] = []
    for row, target in enumerate(targets):
        p, allowed = probs[row], np.isfinite(scores[row])
        alive = np.isin(first, np.argsort(-np.bincount(first, weights=p))[:WIDTH])
        cell_mass = np.bincount(cell, weights=p * alive)
        alive &= np.isin(cell, np.argsort(-cell_mass)[:WIDTH]) & allowed
        cell_prior = np.bincount(cell, weights=prior * allowed)
        score = np.where(alive, cell_mass[cell] * prior / np.maximum(cell_prior[cell], 1e-12), -1.0)
        ranks.append(int((score > score[target]).sum()) if alive[target] else None)
    return metrics.ndcg(ranks, 10)


def llm_ndcg(paths: list[Path]) -> dict[str, float]:
    """Bundle folder name -> the LLM's NDCG@10, from `benchmarks/seeds.py` results files."""
    out = {}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            llm = next(v for k, v in run["systems"].items() if k.startswith("llm"))
            out[Path(run["bundle"]).name] = llm["ndcg@10"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path, help="Bundles with their own sids.parquet (same catalog and log).")
    ap.add_argument("--split-bundle", type=Path, required=True, help="Bundle whose catalog and log make the split.")
    ap.add_argument("--cases", choices=("valid", "test"), default="valid")
    ap.add_argument("--llm", action="append", type=Path, default=[], help="benchmarks/seeds.py results files.")
    ap.add_argument("--out", type=Path, help="Write the table as JSON here.")
    args = ap.parse_args()
    t0 = time.perf_counter()
    catalog, scores, targets = knn_scores(args.split_bundle, args.cases)
    flat = metrics.ndcg((scores > scores[np.arange(len(targets)), targets][:, None]).sum(axis=1).tolist(), 10)
    llm = llm_ndcg(args.llm)
    rows: list[dict[str, Any]] = []
    print(f"item-kNN without the tree: NDCG@10 {flat:.4f} ({len(targets)} {args.cases} users)")
    print("| bundle | kNN through the SID tree, NDCG@10 | LLM NDCG@10 |")
    print("|---|---|---|")
    for bundle in args.bundles:
        row = {"bundle": bundle.name, "signal": tree_ndcg(catalog, scores, targets, bundle / "sids.parquet"),
               "llm": llm.get(bundle.name)}
        rows.append(row)
        shown = f"{row['llm']:.4f}" if row["llm"] is not None else "–"
        print(f"| {row['bundle']} | {row['signal']:.4f} | {shown} |", flush=True)
    result: dict[str, Any] = {"cases": args.cases, "users": len(targets), "flat_knn_ndcg@10": flat, "rows": rows,
                              "seconds": time.perf_counter() - t0}
    paired = [(r["signal"], r["llm"]) for r in rows if r["llm"] is not None]
    if len(paired) >= 3:
        from scipy.stats import pearsonr, spearmanr

        x, y = zip(*paired, strict=True)
        pearson, spearman = pearsonr(x, y), spearmanr(x, y)
        result.update(pearson=float(pearson.statistic), pearson_p=float(pearson.pvalue),
                      spearman=float(spearman.statistic), spearman_p=float(spearman.pvalue))
        print(f"{len(paired)} fits: Pearson {pearson.statistic:.2f} (p {pearson.pvalue:.2f}), "
              f"Spearman {spearman.statistic:.2f} (p {spearman.pvalue:.2f})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
