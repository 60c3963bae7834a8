"""CLI commands: `chatrec model prepare`, `chatrec model calibrate` and `chatrec tokenizer extend`."""

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


@model_app.command("calibrate")
def calibrate(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle whose BUNDLE/trained/ was finetuned with `--reading events`."),
    weight: float = typer.Option(None, "--weight", help="Weight of log(1 + an item's training events) in its served "
                                 "score (default: the best of 0-0.6 on the validation users)."),
    eval_users: int = typer.Option(3000, "--eval-users", help="Seeded validation users that choose the weight."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation users (the finetune run's, to score its users)."),
) -> None:
    """Set the popularity prior of an events model's served scores (chosen on validation users); then
    `chatrec export`. `chatrec finetune --reading events` does this at the end of training."""
    from chatrec.bundle import Bundle
    from finetune.events import calibrate as run

    b = Bundle(bundle)
    out = run(b, weight=weight, eval_users=eval_users, seed=seed)
    for w, v in out.get("valid_ndcg@10_by_weight", {}).items():
        typer.echo(f"weight {w}: validation NDCG@10 {v:.4f} ({out['users']} users)")
    typer.echo(f"{b.root / 'trained'}: popularity weight {out['popularity_weight']:g}; "
               f"next: `chatrec export --bundle {bundle}`")


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
