"""The SID quality report: code usage per level, collisions, reconstruction error."""

from __future__ import annotations

from typing import Any

import numpy as np


def level_stats(codes: np.ndarray, sizes: list[int]) -> list[dict[str, Any]]:
    """Per level: used codes, utilisation (used / size), entropy (bits) and perplexity of usage."""
    out = []
    for level, size in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log2(p)).sum())
        out.append({
            "level": level,
            "codebook_size": int(size),
            "used": int((counts > 0).sum()),
            "utilisation": float((counts > 0).sum() / size),
            "entropy_bits": entropy,
            "max_entropy_bits": float(np.log2(size)),
            "perplexity": float(2.0 ** entropy),
        })
    return out


def collision_stats(codes: np.ndarray) -> dict[str, float | int]:
    """How many items share their code tuple with another item."""
    n = len(codes)
    if n == 0:
        return {"collision_rate": 0.0, "items_in_collisions": 0.0, "unique_tuples": 0, "largest_group": 0}
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "collision_rate": float(1.0 - len(counts) / n),          # items beyond the first per tuple
        "items_in_collisions": float(counts[counts > 1].sum() / n),  # items sharing their tuple
        "unique_tuples": int(len(counts)),
        "largest_group": int(counts.max()),
    }


def reconstruction_stats(x: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """MSE per item (summed over dimensions), relative to ||x||^2 and to the variance of x."""
    err = float(((x - recon) ** 2).sum(axis=1).mean())
    norm = float((x ** 2).sum(axis=1).mean())
    var = float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())
    return {
        "mse": err,
        "relative_error": err / norm if norm > 0 else 0.0,
        "unexplained_variance": err / var if var > 0 else 0.0,
    }


def build_report(*, x: np.ndarray, recon: np.ndarray, codes: np.ndarray, method: str,
                 codebook_size: int, requested_codebook_size: int, seconds: dict[str, float]) -> dict[str, Any]:
    """Everything `sids/report.json` holds; `codes` is `[N, L + 1]` (last = disambiguation)."""
    learned, dis = codes[:, :-1], codes[:, -1]
    levels = learned.shape[1]
    return {
        "method": method,
        "n_items": int(len(codes)),
        "embedding_dim": int(x.shape[1]),
        "levels": levels,
        "codebook_size": int(codebook_size),
        "requested_codebook_size": int(requested_codebook_size),
        "level_sizes": [int(codebook_size)] * levels + [int(dis.max()) + 1 if len(dis) else 1],
        "per_level": level_stats(learned, [codebook_size] * levels),
        "before_disambiguation": collision_stats(learned),
        "after_disambiguation": collision_stats(codes),
        "max_disambiguation_index": int(dis.max()) if len(dis) else 0,
        "reconstruction": reconstruction_stats(x, recon),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"{report['n_items']:,} items -> {report['levels']} levels x {report['codebook_size']} codes "
             f"+ disambiguation ({report['method']}, {report['seconds'].get('total', 0):.1f}s)"]
    for s in report["per_level"]:
        lines.append(f"  level {s['level']}: {s['used']}/{s['codebook_size']} codes used "
                     f"({100 * s['utilisation']:.1f}%), perplexity {s['perplexity']:.1f}")
    before, after = report["before_disambiguation"], report["after_disambiguation"]
    lines.append(f"  collisions: {100 * before['collision_rate']:.2f}% before disambiguation "
                 f"(largest group {before['largest_group']}), {100 * after['collision_rate']:.2f}% after; "
                 f"max disambiguation index {report['max_disambiguation_index']}")
    rec = report["reconstruction"]
    lines.append(f"  reconstruction: mse {rec['mse']:.4f}, relative {rec['relative_error']:.3f}, "
                 f"unexplained variance {rec['unexplained_variance']:.3f}")
    return "\n".join(lines)
