"""Residual k-means (RQ-KMeans) with faiss: level l clusters what levels < l left unexplained."""

from __future__ import annotations

import numpy as np

from chatrec.deps import require


def fit_rqkmeans(x: np.ndarray, levels: int, codebook_size: int, *, seed: int = 0, iters: int = 25,
                 progress: bool = False) -> np.ndarray:
    """Codebooks `[levels, codebook_size, dim]` learned level by level on the residuals of `x`."""
    require("faiss", "residual k-means")
    import faiss
    from tqdm.auto import tqdm

    x = np.ascontiguousarray(x, dtype=np.float32)          # [N, dim]
    n, dim = x.shape
    if codebook_size > n:
        raise ValueError(f"codebook_size {codebook_size} exceeds the {n} training vectors")
    residual = x.copy()
    books = np.empty((levels, codebook_size, dim), dtype=np.float32)
    for level in tqdm(range(levels), desc="rq-kmeans levels", disable=not progress):
        km = faiss.Kmeans(dim, codebook_size, niter=iters, seed=seed * 1_000 + level + 1, verbose=False,
                          max_points_per_centroid=256, min_points_per_centroid=1)
        km.train(residual)
        centroids = np.asarray(km.centroids, dtype=np.float32)  # [K, dim]
        books[level] = centroids
        _, idx = km.index.search(residual, 1)               # [N, 1]
        residual -= centroids[idx[:, 0]]
    return books


def encode_residual(x: np.ndarray, codebooks: np.ndarray, batch: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Codes `[N, levels]` (nearest codeword per level on the running residual) and the
    reconstruction `[N, dim]` (sum of the chosen codewords)."""
    require("faiss", "residual quantization")
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    levels, k, dim = codebooks.shape
    if x.shape[1] != dim:
        raise ValueError(f"vectors have {x.shape[1]} dimensions but the codebooks {dim}")
    indexes = []
    for level in range(levels):
        index = faiss.IndexFlatL2(dim)
        index.add(np.ascontiguousarray(codebooks[level]))
        indexes.append(index)
    codes = np.empty((len(x), levels), dtype=np.int64)
    recon = np.zeros_like(x)
    for start in range(0, len(x), batch):
        residual = x[start:start + batch].copy()
        for level, index in enumerate(indexes):
            _, idx = index.search(residual, 1)
            codes[start:start + batch, level] = idx[:, 0]
            chosen = codebooks[level][idx[:, 0]]
            recon[start:start + batch] += chosen
            residual -= chosen
    return codes, recon
