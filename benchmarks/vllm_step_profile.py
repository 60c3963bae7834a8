"""Where a vLLM retrieval step spends its time: cProfile inside `engine.step()` (the step thread).

In process, vLLM engine, prompts as served, on the bundle's export; distinct test-user
histories. Prints the top-10 p50, the steps per top-10 and their p50, then the profile of the steps
of `--users` more users, by own time:

    .venv/bin/python benchmarks/vllm_step_profile.py --bundle BUNDLE [--users 20] [--last-level model]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not benchmarks/: its serve.py would shadow the serve package


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--last-level", default=None, help="model or prior (default: as served)")
    ap.add_argument("--top", type=int, default=30, help="Profile rows to print.")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import pandas as pd

    from chatrec.recommender import Recommender

    n = args.users
    log = pd.read_parquet(Path(args.bundle) / "interactions.parquet").sort_values(["user_id", "timestamp"])
    users = sorted(log["user_id"].unique(), key=str)[100: 100 + 2 * n + 3]
    hists = [[(str(i), str(a)) for i, a in zip(g["item_id"], g["action"], strict=True)][-120:]
             for _, g in log[log.user_id.isin(users)].groupby("user_id")]
    rec = Recommender.from_bundle(args.bundle, engine="vllm")
    if args.last_level:
        rec.last_level = args.last_level
    core = rec.engine.engine
    step, steps = core.step, []
    profile, profiling = cProfile.Profile(), [False]

    def timed_step():  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        if profiling[0]:
            profile.enable()
        out = step()
        if profiling[0]:
            profile.disable()
        steps.append(time.perf_counter() - t)
        return out

    core.step = timed_step
    try:
        for h in hists[-3:]:  # warm-up
            rec.recommend(h)
        steps.clear()
        lat = []
        for h in hists[:n]:
            t = time.perf_counter()
            rec.recommend(h)
            lat.append(time.perf_counter() - t)
        print(f"last level: {rec.last_level}; top-10 p50 {statistics.median(lat) * 1000:.1f} ms; "
              f"{len(steps) / n:.2f} steps per top-10, step p50 {statistics.median(steps) * 1000:.1f} ms, "
              f"steps per top-10 {sum(steps) / n * 1000:.1f} ms")
        profiling[0] = True
        for h in hists[n:2 * n]:
            rec.recommend(h)
        profiling[0] = False
    finally:
        core.step = step
        rec.close()
    s = io.StringIO()
    pstats.Stats(profile, stream=s).sort_stats("tottime").print_stats(args.top)
    print(s.getvalue())


if __name__ == "__main__":
    main()
