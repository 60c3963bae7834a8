"""MovieLens-1M baselines on both protocols, beside the published full-ranking figures.

    nice -n 19 .venv/bin/python benchmarks/ml1m_baselines.py --bundle BUNDLE
    .venv/bin/python benchmarks/ml1m_baselines.py --liked A/eval.json --last-item B/eval.json \\
        --cpu-s liked=SECONDS --cpu-s last-item=SECONDS          # assemble runs made by `chatrec eval`
        [--add liked=C.json --add last-item=D.json]            # and systems scored in other runs (SASRec, LLM)
        [--add-seeds liked:NAME=S0.json,S1.json,S2.json]       # one LLM recipe over seeds, as one row NAME

With `--bundle`: imports MovieLens-1M into BUNDLE when it has no catalog (`chatrec data import
movielens-1m`, timed), copies the two tables into BUNDLE-last-item, then runs `chatrec eval
--systems popularity,itemknn,sasrec` on every test user with `--protocol liked` on BUNDLE and
`--protocol last-item` on the copy (one subprocess each; its CPU seconds are read from the
kernel's child-process accounting). Writes benchmarks/results/ml1m_eval.json: our protocol's rows
at the top level, as in ml100k_eval.json, the last-item rows under "last-item", and the published
last-item figures (HSTU paper, full ranking) with our SASRec's ratio to them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SYSTEMS = "popularity,itemknn,sasrec"
PROTOCOLS = ("liked", "last-item")
PUBLISHED_SOURCE = ("Zhai et al. 2024, Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers "
                    "for Generative Recommendations (ICML), ML-1M, last-item protocol, full ranking")
PUBLISHED: dict[str, dict[str, float]] = {
    "sasrec": {"ndcg@10": 0.1603, "hr@10": 0.2853},
    "hstu-large": {"ndcg@10": 0.1893, "hr@10": 0.3294},
}
PUBLISHED_SASREC_SETUP = ("the authors' frozen config: 200 most recent items, 50-dim embeddings, 2 blocks, 1 head, "
                          "dropout 0.2, sampled softmax with 128 negatives, l2-normalised embeddings, temperature "
                          "0.05, 101 epochs, GPU")


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` (its output passes through); returns (wall seconds, CPU seconds)."""
    cpu0, t0 = _child_cpu_s(), time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0, _child_cpu_s() - cpu0


def run_all(bundle: Path) -> tuple[dict[str, Path], dict[str, dict[str, float]]]:
    """Import (when needed) and evaluate both protocols; returns eval.json paths and timings."""
    chatrec = [sys.executable, "-m", "chatrec"]
    timings: dict[str, dict[str, float]] = {}
    if not (bundle / "catalog.parquet").exists():
        wall, cpu = _run([*chatrec, "data", "import", "movielens-1m", "--out", str(bundle)])
        timings["import"] = {"wall_s": wall, "cpu_s": cpu}
    last = bundle.parent / f"{bundle.name}-last-item"
    last.mkdir(exist_ok=True)
    for name in ("catalog.parquet", "interactions.parquet"):
        shutil.copy2(bundle / name, last / name)
    paths = {"liked": bundle / "eval.json", "last-item": last / "eval.json"}
    for protocol, target in (("liked", bundle), ("last-item", last)):
        wall, cpu = _run([*chatrec, "eval", "--bundle", str(target), "--systems", SYSTEMS, "--protocol", protocol])
        timings[protocol] = {"wall_s": wall, "cpu_s": cpu}
    return paths, timings


def check_same_split(base: dict[str, Any], other: dict[str, Any], source: str) -> None:
    """Stop unless `other` (a `chatrec eval` result's split) scored the same users as `base`: the same
    protocol, cases, test users, catalog and sampling seed."""
    defaults = {"protocol": "liked", "cases": "test"}
    for key in ("protocol", "cases", "test_users", "catalog_items", "seed"):
        mine, theirs = other.get(key, defaults.get(key)), base.get(key, defaults.get(key))
        if mine != theirs:
            raise SystemExit(f"{source}: {key} {mine!r} differs from the base run's {theirs!r} (not the same split)")
    # an LLM scored on another protocol than it trained on leaves out the targets it trained on (chatrec eval)
    dropped = other.get("dropped_trained_targets", {}).get(other.get("cases", "test"), 0)
    if "evaluated_users" in base and other.get("evaluated_users", base["evaluated_users"]) + dropped \
            != base["evaluated_users"]:
        raise SystemExit(f"{source}: {other.get('evaluated_users')} users scored (+{dropped} left out as trained on) "
                         f"against the base run's {base['evaluated_users']} (not the same users)")


def merge(base: dict[str, Any], extra: dict[str, Any], source: str) -> dict[str, Any]:
    """`base` with the systems of `extra` (a `chatrec eval` result of the same protocol and bundle) added;
    a system in both keeps `extra`'s row, and the split records which file each added row came from."""
    check_same_split(base["split"], extra["split"], source)
    out = dict(base)
    systems = dict(base["split"].get("systems", {}))
    added = dict(base["split"].get("added_from", {}))
    for name, row in extra.items():
        if name != "split" and isinstance(row, dict):
            out[name] = row
            systems[name] = extra["split"].get("systems", {}).get(name)
            added[name] = source
    out["split"] = {**base["split"], "systems": systems, "added_from": added}
    return out


def llm_system(result: dict[str, Any], source: str) -> str:
    """The name of the one LLM row of a `chatrec eval` result (its only system, or the `llm*` one
    among baselines scored beside it on the same users)."""
    names = [n for n, r in result.items() if n != "split" and isinstance(r, dict)]
    if len(names) > 1:  # an LLM scored beside baselines on the same users: its row
        names = [n for n in names if n.startswith("llm")]
    if len(names) != 1:
        raise SystemExit(f"{source}: expected one (LLM) system, found {names}")
    return names[0]


def seeds_row(paths: list[str], base_split: dict[str, Any]) -> dict[str, Any]:
    """One row from `chatrec eval` results of the same recipe over seeds (one LLM system each): every
    metric's mean, the spread (sample std) of the headline ones, and each seed's row and training run.
    Each seed must have been scored on `base_split`'s users."""
    rows, configs = [], []
    for path in paths:
        result = json.loads(Path(path).read_text())
        name = llm_system(result, path)
        check_same_split(base_split, result["split"], path)
        rows.append(result[name])
        configs.append(result["split"].get("systems", {}).get(name, {}))
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    row: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in numeric}
    row["users"] = rows[0]["users"]
    row["seeds"] = len(rows)
    if len(rows) > 1:  # one seed has no spread to report
        row["std"] = {k: float(np.std([r[k] for r in rows], ddof=1)) for k in ("ndcg@10", "hr@10")}
    for key in ("engine", "search", "last_level"):
        row[key] = rows[0].get(key)
    row["per_seed"] = [{"file": path, "ndcg@10": r["ndcg@10"], "hr@10": r["hr@10"],
                        **{k: cfg.get(k) for k in ("steps", "epochs_seen", "train_minutes", "layers", "bundle")}}
                       for path, r, cfg in zip(paths, rows, configs, strict=True)]
    return row


def http_seeds_row(paths: list[str], base_split: dict[str, Any]) -> dict[str, Any]:
    """One row from `benchmarks/http_eval.py` results (the served model over HTTP from `chatrec serve`), one
    seed each: NDCG@10 and HR@10 means, their spread and each seed's figures. Each seed must have scored
    as many users as the base run."""
    rows = [json.loads(Path(path).read_text()) for path in paths]
    users = base_split.get("evaluated_users", base_split.get("test_users"))
    for path, r in zip(paths, rows, strict=True):
        if r.get("split", "test") != base_split.get("cases", "test") or r["users"] != users:
            raise SystemExit(f"{path}: {r['users']} {r.get('split')} users, not the base run's split")
    row: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in ("ndcg@10", "hr@10", "p50_ms")}
    row.update(users=rows[0]["users"], seeds=len(rows), engine="vllm, over HTTP from chatrec serve",
               train_minutes=float(np.mean([r.get("train_minutes") or np.nan for r in rows])))
    if len(rows) > 1:
        row["std"] = {k: float(np.std([r[k] for r in rows], ddof=1)) for k in ("ndcg@10", "hr@10")}
    row["per_seed"] = [{"file": path, **{k: r.get(k) for k in ("ndcg@10", "hr@10", "p50_ms", "train_minutes", "steps",
                                                                "history", "bundle")}}
                       for path, r in zip(paths, rows, strict=True)]
    return row


def assemble(evals: dict[str, dict[str, Any]], timings: dict[str, dict[str, float]], machine: str = ""
             ) -> dict[str, Any]:
    """ml1m_eval.json: our protocol's rows on top (as ml100k_eval.json), last-item rows and the published ones."""
    machine = machine or f"{platform.processor() or platform.machine()}, 2 cores shared with other jobs, nice 19"
    out: dict[str, Any] = dict(evals["liked"])
    out["split"] = {**evals["liked"]["split"], "machine": machine, "process": timings.get("liked")}
    out["last-item"] = {**evals["last-item"],
                        "split": {**evals["last-item"]["split"], "machine": machine,
                                  "process": timings.get("last-item")}}
    ours = evals["last-item"].get("sasrec", {})
    out["published"] = {
        "source": PUBLISHED_SOURCE, **PUBLISHED, "sasrec_setup": PUBLISHED_SASREC_SETUP,
        "ours_vs_published_sasrec": {m: ours[m] / PUBLISHED["sasrec"][m] for m in ("ndcg@10", "hr@10") if m in ours},
    }
    if "import" in timings:
        out["import"] = timings["import"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="Import (if needed) and evaluate here; BUNDLE-last-item is made.")
    ap.add_argument("--liked", type=Path, help="eval.json of `chatrec eval --protocol liked` (assemble only).")
    ap.add_argument("--last-item", type=Path, help="eval.json of `chatrec eval --protocol last-item`.")
    ap.add_argument("--cpu-s", action="append", default=[], metavar="PROTOCOL=SECONDS",
                    help="CPU seconds of an assembled run (e.g. from /usr/bin/time), per protocol.")
    ap.add_argument("--add", action="append", default=[], metavar="PROTOCOL=PATH",
                    help="Also take the systems of this `chatrec eval` result (same split), per protocol.")
    ap.add_argument("--add-seeds", action="append", default=[], metavar="PROTOCOL:NAME=PATH,PATH,...",
                    help="Add one row NAME: the mean over these `chatrec eval` results (one LLM recipe, one seed "
                         "each), with the spread and each seed's row; --describe NAME=TEXT says what it is.")
    ap.add_argument("--add-http-seeds", action="append", default=[], metavar="PROTOCOL:NAME=PATH,PATH,...",
                    help="As --add-seeds, from benchmarks/http_eval.py results (NDCG@10 and HR@10 over HTTP).")
    ap.add_argument("--describe", action="append", default=[], metavar="NAME=TEXT",
                    help="What an --add-seeds row is (engine, machine, training budget), stored with it.")
    ap.add_argument("--machine", default="", help="What the runs ran on (default: this CPU, shared, nice 19).")
    ap.add_argument("--out", type=Path, default=RESULTS / "ml1m_eval.json")
    args = ap.parse_args()
    timings: dict[str, dict[str, float]] = {}
    if args.bundle is not None:
        paths, timings = run_all(args.bundle)
    elif args.liked is not None and args.last_item is not None:
        paths = {"liked": args.liked, "last-item": args.last_item}
        for pair in args.cpu_s:
            protocol, _, seconds = pair.partition("=")
            if protocol not in PROTOCOLS:
                ap.error(f"--cpu-s takes PROTOCOL=SECONDS with PROTOCOL in {PROTOCOLS}, got {pair!r}")
            timings[protocol] = {"cpu_s": float(seconds)}
    else:
        ap.error("give --bundle, or both --liked and --last-item")
    evals = {p: json.loads(Path(paths[p]).read_text()) for p in PROTOCOLS}
    for protocol in PROTOCOLS:
        got = evals[protocol]["split"].get("protocol", "liked")
        if got != protocol:
            ap.error(f"{paths[protocol]} was made with protocol {got!r}, not {protocol!r}")
    for pair in args.add:
        protocol, _, path = pair.partition("=")
        if protocol not in PROTOCOLS:
            ap.error(f"--add takes PROTOCOL=PATH with PROTOCOL in {PROTOCOLS}, got {pair!r}")
        evals[protocol] = merge(evals[protocol], json.loads(Path(path).read_text()), path)
    notes = dict(pair.partition("=")[::2] for pair in args.describe)
    for spec, make_row in [*((s, seeds_row) for s in args.add_seeds), *((s, http_seeds_row) for s in args.add_http_seeds)]:
        where, _, paths = spec.partition("=")
        protocol, _, name = where.partition(":")
        if protocol not in PROTOCOLS or not name or not paths:
            ap.error(f"--add-seeds takes PROTOCOL:NAME=PATH,PATH,... with PROTOCOL in {PROTOCOLS}, got {spec!r}")
        row = make_row(paths.split(","), evals[protocol]["split"])
        if name in notes:
            row["about"] = notes[name]
        evals[protocol] = {**evals[protocol], name: row}
        added = dict(evals[protocol]["split"].get("added_from", {}))
        added[name] = paths
        evals[protocol]["split"] = {**evals[protocol]["split"], "added_from": added}
    result = assemble(evals, timings, args.machine)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [(p, name, r) for p, src in (("liked", result), ("last-item", result["last-item"]))
            for name, r in src.items() if isinstance(r, dict) and "ndcg@10" in r]
    print("| protocol | system | HR@10 | NDCG@10 | seeds (NDCG@10 std) | users | fit_s | train minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for p, name, r in rows:
        minutes = f"{r['train_minutes']:.1f}" if r.get("train_minutes") is not None else "–"
        fit = f"{r['fit_s']:.0f}" if r.get("fit_s") is not None else "–"
        seeds = f"{r['seeds']} ({r['std']['ndcg@10']:.4f})" if "std" in r else "1"
        print(f"| {p} | {name} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {seeds} | {r['users']} | "
              f"{fit} | {minutes} |")
    for name in ("sasrec", "hstu-large"):
        pub = PUBLISHED[name]
        print(f"| last-item (published) | {name} | {pub['hr@10']:.4f} | {pub['ndcg@10']:.4f} | – | 6040 | – | – |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
