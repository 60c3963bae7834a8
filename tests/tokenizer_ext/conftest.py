"""Fixtures for tokenizer extension: the real SmolLM2 tokenizer, a Qwen2 tokenizer, tiny bundles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chatrec.bundle import Bundle
from chatrec.testing import make_tiny_bundle, smollm2_tokenizer

DATA = Path(__file__).parent / "data"
QWEN2_GGUF = DATA / "ggml-vocab-qwen2.gguf"
QWEN2_GGUF_SHA256 = "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c"


@pytest.fixture
def smol_tok() -> Any:
    """A fresh copy of the real SmolLM2 tokenizer (tests may add tokens to it)."""
    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def qwen2_tokenizer_dir() -> Path:
    """An HF folder with the Qwen2 tokenizer converted once from the vocab-only GGUF in tests data.

    The GGUF (5.9 MB) is `vendor/llama.cpp/models/ggml-vocab-qwen2.gguf` from the
    `llama-cpp-python==0.3.16` sdist (MIT). Reading it with transformers takes one to two minutes
    on 2 CPU cores, so the converted tokenizer is cached under `CHATREC_HOME/cache`.
    """
    from chatrec.assets import sha256_of
    from chatrec.bundle import atomic_path
    from chatrec.paths import cache_dir

    if not QWEN2_GGUF.exists():
        pytest.skip(f"{QWEN2_GGUF} is missing")
    if sha256_of(QWEN2_GGUF) != QWEN2_GGUF_SHA256:
        pytest.fail(f"{QWEN2_GGUF} has an unexpected sha256")
    folder = cache_dir("test-assets") / f"qwen2-tokenizer-{QWEN2_GGUF_SHA256[:12]}"
    if not (folder / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(DATA), gguf_file=QWEN2_GGUF.name)
        with atomic_path(folder) as tmp:
            tok.save_pretrained(tmp)
    return folder


@pytest.fixture
def qwen2_tok(qwen2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen2_tokenizer_dir))


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Bundle:
    """A fresh copy of the standard tiny bundle (40 items, levels 8x8 + disambiguation, extended)."""
    return make_tiny_bundle(tmp_path / "bundle")


@pytest.fixture(autouse=True)
def _quiet_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
