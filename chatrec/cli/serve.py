"""CLI commands: `chatrec serve` (registered on chatrec.cli.app)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from chatrec.cli.app import app


def _help(name: str) -> str:
    from serve.service import ServeConfig

    return str(ServeConfig.__dataclass_fields__[name].metadata["help"])


@app.command("serve")
def serve(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory to serve (export/ when present, else model/)."),
    engine: str = typer.Option("auto", "--engine", help="Engine: vllm, transformers, or auto (vllm when installed)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: str = typer.Option(None, "--api-key", help="Require `Authorization: Bearer KEY` (default: $CHATREC_API_KEY)."),
    model_name: str = typer.Option("chatrec", "--model-name", help="Model id clients pass as `model`."),
    log_chats: bool = typer.Option(False, "--log-chats", help="Log served chats to BUNDLE/logs/chats.jsonl (interaction schema)."),
    max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", help="Largest `max_tokens` a request may ask for."),
    max_model_len: int = typer.Option(2048, "--max-model-len", help="Longest prompt + answer in tokens."),
) -> None:
    """Serve a bundle behind an OpenAI-compatible endpoint with SID-constrained decoding."""
    from chatrec.bundle import Bundle
    from chatrec.deps import require
    from serve.service import ServeConfig

    require("fastapi", "the server")
    require("uvicorn", "the server")
    config = ServeConfig(bundle=str(Bundle(bundle).root), engine=engine, host=host, port=port,
                         api_key=api_key or os.environ.get("CHATREC_API_KEY") or None, model_name=model_name,
                         log_chats=log_chats, max_tokens_limit=max_tokens_limit,
                         default_max_tokens=min(256, max_tokens_limit), max_model_len=max_model_len)
    from serve.server import run

    run(config)
