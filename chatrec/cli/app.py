"""The Typer app and its command groups; command modules register onto these."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from chatrec.errors import ChatrecError


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


class ChatrecGroup(TyperGroup):
    """Prints a `ChatrecError` as one line on stderr and exits with its code, no traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ChatrecError as exc:
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


def _group(help: str) -> typer.Typer:
    return typer.Typer(cls=ChatrecGroup, help=help, no_args_is_help=True,
                       pretty_exceptions_enable=False, add_completion=False)


app = _group("chatrec: an open conversational recommender (semantic IDs + LoRA + vLLM).")
data_app = _group("Import, validate and build data.")
sids_app = _group("Fit and assign semantic IDs.")
model_app = _group("Prepare base models.")
tokenizer_app = _group("Extend a tokenizer and model with SID, action and span tokens.")

app.add_typer(data_app, name="data")
app.add_typer(sids_app, name="sids")
app.add_typer(model_app, name="model")
app.add_typer(tokenizer_app, name="tokenizer")


def _print_version(value: bool) -> None:
    if value:
        from chatrec import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """chatrec: an open conversational recommender (semantic IDs + LoRA + vLLM)."""


def main() -> None:
    """Console entry point."""
    app(prog_name="chatrec")


if __name__ == "__main__":  # pragma: no cover
    main()
