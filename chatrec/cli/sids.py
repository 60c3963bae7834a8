"""CLI commands: `chatrec sids fit`, `chatrec sids assign` (on `sids_app`)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from chatrec.cli.app import sids_app
from chatrec.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


def _help(name: str) -> str:
    from chatrec.sids.config import SidConfig

    return next(f.metadata.get("help", "") for f in dataclasses.fields(SidConfig) if f.name == name)


_BUNDLE_HELP = "Bundle directory (default: CHATREC_HOME/bundles/default)."


@sids_app.command("fit")
def fit_cmd(
    bundle: Path = typer.Option(None, "--bundle", help=_BUNDLE_HELP),
    method: str = typer.Option("rqkmeans", "--method", help=_help("method")),
    levels: int = typer.Option(2, "--levels", help=_help("levels")),
    codebook_size: int = typer.Option(0, "--codebook-size", help=_help("codebook_size")),
    collaborative_weight: float = typer.Option(8.0, "--collaborative-weight", help=_help("collaborative_weight")),
    disambiguation: str = typer.Option("popularity", "--disambiguation", help=_help("disambiguation")),
    codebooks_from: str = typer.Option("all", "--codebooks-from", help=_help("codebooks_from")),
    impute_cold: bool = typer.Option(True, "--impute-cold/--no-impute-cold", help=_help("impute_cold")),
    seed: int = typer.Option(0, "--seed", help=_help("seed")),
    epochs: int = typer.Option(100, "--epochs", help=_help("rqvae_epochs")),
    embedding_model: str = typer.Option(None, "--embedding-model", help="Text encoder: a sentence-transformers "
                                        "name or path (default all-MiniLM-L6-v2, offline)."),
) -> None:
    """Learn semantic IDs for the bundle's catalog: writes sids.parquet and sids/ (codebooks, report)."""
    from chatrec.bundle import Bundle
    from chatrec.embeddings import EmbeddingConfig
    from chatrec.paths import default_bundle
    from chatrec.sids import SidConfig, fit_bundle, summary

    embedding = EmbeddingConfig(model=embedding_model) if embedding_model else EmbeddingConfig()
    config = SidConfig(method=method, levels=levels, codebook_size=codebook_size, seed=seed,
                       collaborative_weight=collaborative_weight, disambiguation=disambiguation,
                       codebooks_from=codebooks_from, impute_cold=impute_cold,
                       rqvae_epochs=epochs, embedding=embedding)
    b = Bundle(bundle or default_bundle())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = fit_bundle(b, config)
    for w in caught:
        if issubclass(w.category, UserWarning):
            typer.echo(f"warning: {w.message}", err=True)
    typer.echo(summary(result.report))
    typer.echo(f"wrote {b.sids_path} and {b.path('sids')}/; next: `chatrec tokenizer extend --bundle {b.root}`")


@sids_app.command("assign")
def assign_cmd(
    items: Path = typer.Option(..., "--items", help="New items (catalog-shaped Parquet, JSONL or CSV: "
                               "item_id, title, text, categories)."),
    bundle: Path = typer.Option(None, "--bundle", help=_BUNDLE_HELP),
    no_catalog: bool = typer.Option(False, "--no-catalog", help="Do not append the new items to catalog.parquet."),
) -> None:
    """Give new items SIDs with the frozen codebooks (cold start); existing SIDs never change."""
    from chatrec.bundle import Bundle
    from chatrec.paths import default_bundle
    from chatrec.sids import assign_bundle, level_sizes

    b = Bundle(bundle or default_bundle())
    b.require("sids.parquet")
    frame = read_items(items)
    rows = assign_bundle(b, frame, update_catalog=not no_catalog)
    skipped = len(frame) - len(rows)
    typer.echo(f"assigned SIDs to {len(rows)} new item(s), skipped {skipped} already in the bundle; "
               f"level sizes now {level_sizes(b)}")
    for _, row in rows.head(5).iterrows():
        typer.echo(f"  {row['item_id']}: {row['sid']}")


def read_items(path: Path) -> pd.DataFrame:
    """A catalog-shaped file as a DataFrame, validated by `chatrec.data` when it is there."""
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        from chatrec.data.readers import read_table
        from chatrec.data.validate import validate_catalog
    except ImportError:
        suffix = path.suffix.lower()
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".jsonl", ".ndjson"}:
            return pd.read_json(path, lines=True, dtype={"item_id": str})
        if suffix == ".csv":
            return pd.read_csv(path, dtype={"item_id": str})
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected .parquet, .jsonl or .csv") from None
    result = validate_catalog(read_table(path, "catalog"))
    if result.rejected:
        raise DataError(f"{result.rows_quarantined} invalid item row(s), nothing assigned; first: {result.problems[0]}")
    return result.frame
