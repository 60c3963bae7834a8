"""Item-trie and SID-fit benchmark: trie build time, memory and per-step constraint latency;
SID fit time and peak memory on synthetic embeddings.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/trie.py [--sizes 10000 100000 1000000]
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/trie.py --fit rqkmeans --sizes 10000 100000 1000000
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/trie.py --fit rqvae --epochs 1 --sizes 10000 100000

Trie: synthetic catalogs with 3 code levels of 256 codes plus a disambiguation level, mapped to
token ids after a 49,152-token base vocabulary (a 50k-ish vocabulary in all), like
`tokenizer extend` does. Fit: 384-d low-rank synthetic embeddings (see `synthetic_embeddings`),
3 levels x 256 codes; each size runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np

from chatrec.trie import ItemTrie

BASE_VOCAB = 49_152


def synthetic(n: int, levels: int = 3, codebook: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # skewed code usage, like real SIDs: the first levels are far from uniform
    probs = rng.dirichlet(np.full(codebook, 0.5), size=levels)
    codes = np.stack([rng.choice(codebook, size=n, p=probs[lvl]) for lvl in range(levels)], axis=1)
    # disambiguation level: 0, 1, 2, ... within each collision group
    order = np.lexsort(codes.T[::-1])
    s = codes[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (s[1:] != s[:-1]).any(axis=1)
    group_start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    dis = np.empty(n, dtype=np.int64)
    dis[order] = np.arange(n) - group_start
    codes = np.concatenate([codes, dis[:, None]], axis=1)
    offsets = BASE_VOCAB + np.arange(levels + 1) * codebook
    return codes + offsets


def timeit(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--fit", choices=["rqkmeans", "rqvae"], help="Benchmark SID fitting instead of the trie.")
    ap.add_argument("--epochs", type=int, default=1, help="RQ-VAE epochs for --fit rqvae.")
    args = ap.parse_args()
    rows: list[dict[str, float | int | str]] = []
    for n in args.sizes:
        res: dict[str, float | int | str]
        if args.fit:
            with mp.get_context("spawn").Pool(1) as pool:
                res = pool.apply(measure_fit, (n, args.fit, args.epochs))
        else:
            res = measure(n)
        rows.append(res)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, flush=True)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def measure(n: int) -> dict[str, float | int | str]:
    seqs = synthetic(n)
    ids = [f"item{i}" for i in range(n)]
    t0 = time.perf_counter()
    trie = ItemTrie.from_sequences(seqs, ids)
    build_s = time.perf_counter() - t0
    vocab = int(seqs.max()) + 1
    rng = np.random.default_rng(1)
    picks = seqs[rng.integers(0, n, size=32)]
    prefix1 = [picks[0, :2].tolist()]                       # batch 1, mid-span
    prefix32 = [p[: int(k)].tolist() for p, k in zip(picks, rng.integers(0, 4, size=32), strict=True)]
    allowed = np.ones(n, dtype=bool)
    allowed[rng.integers(0, n, size=50)] = False            # 50 seen items excluded
    node_allowed = trie.node_allowed(allowed)
    m1 = np.zeros((1, vocab), dtype=bool)
    m32 = np.zeros((32, vocab), dtype=bool)
    res: dict[str, float | int | str] = {
        "items": n,
        "nodes": trie.n_nodes,
        "build_s": build_s,
        "MiB": trie.nbytes / 2**20,
        "allowed_next_us": 1e6 * timeit(lambda: trie.allowed_next(prefix1[0]), 2000),
        "allowed_next_root_us": 1e6 * timeit(lambda: trie.allowed_next([]), 2000),
        "fill_b1_us": 1e6 * timeit(lambda: trie.fill_mask(m1, prefix1), 2000),
        "fill_b1_filt_us": 1e6 * timeit(lambda: trie.fill_mask(m1, prefix1, node_allowed=node_allowed), 2000),
        "fill_b32_us": 1e6 * timeit(lambda: trie.fill_mask(m32, prefix32), 500),
        "fill_b32_filt_us": 1e6 * timeit(lambda: trie.fill_mask(m32, prefix32, node_allowed=node_allowed), 500),
        "node_allowed_ms": 1e3 * timeit(lambda: trie.node_allowed(allowed), 10),
    }
    return res


def synthetic_embeddings(n: int, dim: int = 384, rank: int = 64, seed: int = 0) -> np.ndarray:
    """Low-rank 384-d vectors (a 64-d Gaussian latent through a random projection, plus 10% noise),
    L2-normalised: a stand-in for text embeddings, whose variance sits in few directions."""
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(rank, dim)).astype(np.float32) / np.sqrt(rank)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        z = rng.normal(size=(m, rank)).astype(np.float32)
        x[start:start + m] = z @ proj + 0.1 * rng.normal(size=(m, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def measure_fit(n: int, method: str, epochs: int) -> dict[str, float | int | str]:
    from chatrec.sids import SidConfig, fit_sids

    x = synthetic_embeddings(n)
    cfg = SidConfig(method=method, levels=3, codebook_size=256, rqvae_epochs=epochs, progress=False)
    t0 = time.perf_counter()
    result = fit_sids(x, cfg)
    seconds = time.perf_counter() - t0
    rep = result.report
    return {
        "items": n,
        "method": method,
        "fit_s": seconds,
        "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "collision_before_%": 100 * rep["before_disambiguation"]["collision_rate"],
        "collision_after_%": 100 * rep["after_disambiguation"]["collision_rate"],
        "max_dis": rep["max_disambiguation_index"],
        "util_l0_%": 100 * rep["per_level"][0]["utilisation"],
        "rel_error": rep["reconstruction"]["relative_error"],
    }


if __name__ == "__main__":
    main()
