"""Benchmark: SmolLM2 GGUF -> HF conversion, and tokenizer/model extension (time, peak memory, size).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/model_prepare.py [--items 1000] [--levels 256 256 256]

Each step runs in a child process so its peak RSS (`ru_maxrss` of the child) is its own. The
conversion runs in a fresh temporary CHATREC_HOME whose asset cache points at the real one (the
93 MB wheel is not downloaded again). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONVERT = """
from chatrec.models import prepare_model
print(prepare_model(quiet=True))
"""

EXTEND = """
import sys, numpy as np, pandas as pd
from chatrec.bundle import Bundle
from chatrec.testing import make_catalog, make_interactions
from chatrec.tokens import sid_string
from tokenizer_ext import extend_bundle
root, n, levels = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
b = Bundle(root).ensure()
cat = make_catalog(n); make_interactions(cat, n_users=20).to_parquet(b.interactions_path, index=False)
cat.to_parquet(b.catalog_path, index=False)
rng = np.random.default_rng(0)
codes = np.stack([rng.integers(0, s, n) for s in levels], 1).tolist()
seen = {}
full = []
for c in codes:
    k = tuple(c); d = seen.get(k, 0); seen[k] = d + 1; full.append([*c, d])
pd.DataFrame({"item_id": cat.item_id, "codes": full, "sid": [sid_string(c) for c in full]}).to_parquet(b.sids_path)
(b.path("sids")).mkdir(exist_ok=True)
(b.path("sids", "config.json")).write_text('{"effective_codebook_size": %d}' % levels[0])
extend_bundle(b, quiet=True)
"""


PEAK = "\nimport resource; print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"


def run_child(code: str, *args: str, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GiB of that child alone, stdout) of `python -c code args`."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + PEAK, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    lines = proc.stdout.strip().splitlines()
    peak_kb = int(lines[-1].split()[1])
    return wall, peak_kb / 1024 / 1024, "\n".join(lines[:-1])


def safetensors_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--levels", type=int, nargs="+", default=[256, 256, 256])
    args = parser.parse_args()

    from chatrec.paths import cache_dir

    real_assets = cache_dir("assets")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        (home / "cache").mkdir(parents=True)
        (home / "cache" / "assets").symlink_to(real_assets)
        env = {**os.environ, "CHATREC_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        wall, peak, out = run_child(CONVERT, env=env)
        model_dir = Path(out.splitlines()[-1])
        manifest = json.loads((model_dir / "manifest.json").read_text())
        rows.append(("convert GGUF (Q4_1) -> safetensors f32", wall, peak,
                     manifest["parameters"], safetensors_bytes(model_dir)))
        wall2, peak2, _ = run_child(CONVERT, env=env)
        rows.append(("prepare again (idempotent)", wall2, peak2, manifest["parameters"],
                     safetensors_bytes(model_dir)))
        bundle = Path(tmp) / "bundle"
        wall, peak, _ = run_child(EXTEND, str(bundle), str(args.items), *map(str, args.levels), env=env)
        record = json.loads((bundle / "manifest.json").read_text())["stages"]["tokenizer"]
        c = record["counts"]
        rows.append((f"extend ({args.items} items, levels {args.levels}+dis, {c['added_tokens']} tokens)",
                     wall, peak, c["parameters_after"], safetensors_bytes(bundle / "model")))
    gguf = next(real_assets.rglob("*.gguf"))
    print(f"GGUF file: {gguf.stat().st_size:,} bytes")
    print("| step | wall s | peak RSS GiB | parameters | safetensors bytes |")
    print("|---|---:|---:|---:|---:|")
    for name, wall, peak, params, size in rows:
        print(f"| {name} | {wall:.1f} | {peak:.2f} | {params:,} | {size:,} |")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
