"""CLI commands: `chatrec serve` (registered on chatrec.cli.app)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from chatrec.cli.app import app


def secret(value: str | None, file: Path | None, env: str) -> str | None:
    """A key from its option, else its file (first line), else the environment variable `env`."""
    from chatrec.errors import ConfigError

    if value:
        return value
    if file is not None:
        try:
            lines = file.read_text().strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the key file {file}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise ConfigError(f"the key file {file} is empty")
        return lines[0].strip()
    return os.environ.get(env) or None


def _help(name: str) -> str:
    from serve.service import ServeConfig

    return str(ServeConfig.__dataclass_fields__[name].metadata["help"])


@app.command("serve")
def serve(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory to serve (export/ when present, else model/)."),
    engine: str = typer.Option("auto", "--engine", help="Engine: vllm, transformers, or auto (vllm when installed; "
                                                        "remote with --upstream)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: str = typer.Option(None, "--api-key", help="Require `Authorization: Bearer KEY` (default: $CHATREC_API_KEY)."),
    model_name: str = typer.Option("chatrec", "--model-name", help="Model id clients pass as `model`."),
    log_chats: bool = typer.Option(False, "--log-chats", help="Log served chats to BUNDLE/logs/chats.jsonl (interaction schema)."),
    max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", help="Largest `max_tokens` a request may ask for."),
    max_model_len: int = typer.Option(2048, "--max-model-len", help="Longest prompt + answer in tokens."),
    max_request_bytes: int = typer.Option(256 * 1024, "--max-request-bytes", help=_help("max_request_bytes")),
    max_messages: int = typer.Option(64, "--max-messages", help=_help("max_messages")),
    max_prompt_tokens: int = typer.Option(2048, "--max-prompt-tokens", help=_help("max_prompt_tokens")),
    max_beam_tokens: int = typer.Option(131_072, "--max-beam-tokens", help=_help("max_beam_tokens")),
    max_rank_tokens: int = typer.Option(131_072, "--max-rank-tokens", help=_help("max_rank_tokens")),
    max_context_bytes: int = typer.Option(4096, "--max-context-bytes", help=_help("max_context_bytes")),
    feedback_per_minute: int = typer.Option(600, "--feedback-per-minute", help=_help("feedback_per_minute")),
    max_log_bytes: int = typer.Option(1 << 30, "--max-log-bytes", help=_help("max_log_bytes")),
    admin_key: str = typer.Option(None, "--admin-key", help="Key for /v1/admin/reload (default: $CHATREC_ADMIN_KEY); "
                                                            "unset: reload only by SIGHUP."),
    reload_bundles: list[str] = typer.Option(None, "--reload-bundles", help="NAME=PATH of a bundle /v1/admin/reload "
                                                                            "may switch to (repeatable)."),
    allowed_hosts: str = typer.Option("", "--allowed-hosts", help="Comma-separated Host names accepted besides "
                                                                  "loopback and --host (DNS-rebinding guard)."),
    insecure: bool = typer.Option(False, "--insecure", help=_help("insecure")),
    search: str = typer.Option("beam", "--search", help=_help("search")),
    last_level: str = typer.Option(None, "--last-level", help=_help("last_level") + " Default: prior."),
    trim_history: bool = typer.Option(True, "--trim-history/--no-trim-history", help=_help("trim_history")),
    upstream: str = typer.Option(None, "--upstream", help=_help("upstream")),
    upstream_timeout: float = typer.Option(60.0, "--upstream-timeout", help=_help("upstream_timeout")),
    upstream_api_key: str = typer.Option(None, "--upstream-api-key", help=_help("upstream_api_key")),
    api_key_file: Path = typer.Option(None, "--api-key-file", help="Read --api-key from this file (keys given on "
                                                                   "the command line show in `ps`)."),
    admin_key_file: Path = typer.Option(None, "--admin-key-file", help="Read --admin-key from this file."),
    upstream_api_key_file: Path = typer.Option(None, "--upstream-api-key-file",
                                               help="Read --upstream-api-key from this file."),
    stream_stall_seconds: float = typer.Option(30.0, "--stream-stall-seconds", help=_help("stream_stall_seconds")),
    kv_cache_gib: float = typer.Option(1.0, "--kv-cache-gib", help=_help("kv_cache_gib")),
) -> None:
    """Serve a bundle behind an OpenAI-compatible endpoint with SID-constrained decoding."""
    from chatrec.bundle import Bundle
    from chatrec.deps import require
    from chatrec.errors import ConfigError
    from chatrec.retrieval import SERVED_LAST_LEVEL
    from serve.service import ServeConfig

    require("fastapi", "the server")
    require("uvicorn", "the server")
    named: dict[str, str] = {}
    for entry in reload_bundles or []:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--reload-bundles takes NAME=PATH, got {entry!r}")
        named[name] = str(Bundle(path).root)
    config = ServeConfig(bundle=str(Bundle(bundle).root), engine=engine, host=host, port=port,
                         api_key=secret(api_key, api_key_file, "CHATREC_API_KEY"), model_name=model_name,
                         log_chats=log_chats, max_tokens_limit=max_tokens_limit,
                         default_max_tokens=min(256, max_tokens_limit), max_model_len=max_model_len,
                         max_request_bytes=max_request_bytes, max_messages=max_messages,
                         max_prompt_tokens=max_prompt_tokens, max_beam_tokens=max_beam_tokens,
                         max_rank_tokens=max_rank_tokens, max_context_bytes=max_context_bytes,
                         feedback_per_minute=feedback_per_minute, max_log_bytes=max_log_bytes,
                         admin_key=secret(admin_key, admin_key_file, "CHATREC_ADMIN_KEY"), reload_bundles=named,
                         allowed_hosts=tuple(h.strip() for h in allowed_hosts.split(",") if h.strip()),
                         insecure=insecure, search=search, last_level=last_level or SERVED_LAST_LEVEL, trim_history=trim_history,
                         upstream=upstream, upstream_timeout=upstream_timeout,
                         kv_cache_gib=kv_cache_gib, stream_stall_seconds=stream_stall_seconds,
                         upstream_api_key=secret(upstream_api_key, upstream_api_key_file, "CHATREC_UPSTREAM_API_KEY"))
    from serve.server import run

    run(config)
