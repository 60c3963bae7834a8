"""Fixtures for tokenizer extension: the real SmolLM2 tokenizer, a Qwen2 tokenizer, tiny bundles."""

from __future__ import annotations

import gzip
import os
import shutil
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
def qwen2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder with the Qwen2 tokenizer, from `data/qwen2-tokenizer/` (tokenizer.json gzipped).

    That folder is what `AutoTokenizer.from_pretrained(data, gguf_file="ggml-vocab-qwen2.gguf")`
    saves; reading the GGUF takes 2-4 minutes on 2 busy CPU cores, so the fast tests use the saved
    form and the slow test `test_shipped_qwen2_tokenizer_matches_gguf` checks that they agree.
    """
    folder = tmp_path_factory.mktemp("qwen2-tokenizer")
    src = DATA / "qwen2-tokenizer"
    if not (src / "tokenizer.json.gz").exists():
        pytest.skip(f"{src}/tokenizer.json.gz is missing")
    with gzip.open(src / "tokenizer.json.gz", "rb") as fh:
        (folder / "tokenizer.json").write_bytes(fh.read())
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def qwen2_gguf() -> Path:
    from chatrec.assets import sha256_of

    if not QWEN2_GGUF.exists():
        pytest.skip(f"{QWEN2_GGUF} is missing")
    if sha256_of(QWEN2_GGUF) != QWEN2_GGUF_SHA256:
        pytest.fail(f"{QWEN2_GGUF} has an unexpected sha256")
    return QWEN2_GGUF


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
