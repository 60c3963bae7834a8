"""Engines behind the `chatrec.engine.Engine` protocol, and the factory that starts one by name.

Data flows one way: prompts (chatrec.prompts) -> engines (here) -> recommender
(chatrec.recommender) -> service (serve.service). Nothing here imports the recommender.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chatrec.constrained import ConstraintCore
from chatrec.engine import Engine
from chatrec.errors import ConfigError

ENGINES = ("transformers", "vllm", "remote")  # remote: a gateway over a vLLM OpenAI server (`serve --upstream`)


def load_engine(kind: str, model_dir: str | os.PathLike[str], core: ConstraintCore, **kwargs: Any) -> Engine:
    """Start engine `kind` (one of `ENGINES`) on `model_dir` with the constraint `core`."""
    if kind == "transformers":
        from serve.engines.transformers_engine import TransformersEngine

        return TransformersEngine(Path(model_dir), core, **kwargs)
    if kind == "remote":
        from serve.engines.remote_engine import RemoteEngine

        return RemoteEngine(Path(model_dir), core, **kwargs)
    if kind == "vllm":
        from chatrec.deps import require

        require("vllm", "the vLLM engine")
        from serve.engines.vllm_engine import VLLMEngine

        return VLLMEngine(Path(model_dir), core, **kwargs)
    raise ConfigError(f"`engine` must be one of {list(ENGINES)}, got {kind!r}")
