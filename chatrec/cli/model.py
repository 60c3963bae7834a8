"""CLI commands: `chatrec model prepare` and `chatrec tokenizer extend`."""

from __future__ import annotations

from pathlib import Path

import typer

from chatrec.cli.app import model_app, tokenizer_app
from chatrec.models import DEFAULT_BASE, PrepareConfig


def _help(cls: type, name: str) -> str:
    return str(cls.__dataclass_fields__[name].metadata["help"])  # type: ignore[attr-defined]


@model_app.command("prepare")
def prepare(
    base: str = typer.Option(DEFAULT_BASE, "--base", help=_help(PrepareConfig, "base")),
) -> None:
    """Make a base model available as an HF folder (converts the embedded SmolLM2 once)."""
    from chatrec.models import prepare_model

    path = prepare_model(PrepareConfig(base=base).base)
    typer.echo(str(path))


@tokenizer_app.command("extend")
def extend(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory with sids.parquet and interactions.parquet."),
    base: str = typer.Option(DEFAULT_BASE, "--base", help="Base model: `smollm2-135m-instruct`, an HF id or "
                             "an HF folder (ignored when BUNDLE/model exists: it is extended in place)."),
    init: str = typer.Option("semantic", "--init", help="How new embedding rows start: `semantic` (mean embedding "
                             "of the titles of the items using each code; measured better on ML-100k) or `mean` "
                             "of existing rows."),
) -> None:
    """Add SID, action and span tokens to a model + tokenizer; write BUNDLE/model with its trie."""
    from chatrec.bundle import Bundle
    from tokenizer_ext import ExtendConfig, extend_bundle

    config = ExtendConfig(base=base, init=init)
    token_map = extend_bundle(Bundle(bundle), base=config.base, init=config.init)
    typer.echo(f"{Bundle(bundle).model_dir}: {len(token_map.codes)} code tokens, "
               f"{len(token_map.actions)} action tokens, vocabulary {token_map.vocab_size}")
