"""CLI commands: ui (registered on chatrec.cli.app groups)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from chatrec.cli.app import app

if TYPE_CHECKING:
    from ui.app import UIConfig


def _help(name: str) -> str:
    from ui.app import UIConfig

    return next(f.metadata["help"] for f in fields(UIConfig) if f.name == name)


@app.command("ui")
def ui_command(
    endpoint: str = typer.Option(None, "--endpoint", help=_help("endpoint") +
                                 " Without it, a local `chatrec serve` is started on --bundle."),
    api_key: str = typer.Option(None, "--api-key", envvar="CHATREC_API_KEY", help=_help("api_key")),
    api_key_file: Path = typer.Option(None, "--api-key-file", help="Read --api-key from this file (keys given on the "
                                                                   "command line show in `ps`)."),
    auth_file: Path = typer.Option(None, "--auth-file", help="Read --auth (USER:PASSWORD) from this file. "
                                                             + _help("auth")),
    insecure: bool = typer.Option(False, "--insecure", help=_help("insecure")),
    bundle: Path = typer.Option(None, "--bundle", help=_help("bundle") +
                                " Default without --endpoint: CHATREC_HOME/bundles/default."),
    host: str = typer.Option("127.0.0.1", "--host", help=_help("host")),
    port: int = typer.Option(7860, "--port", help=_help("port")),
    user_id: str = typer.Option("ui-user", "--user-id", help=_help("user_id")),
    k: int = typer.Option(5, "--k", help=_help("k")),
    max_tokens: int = typer.Option(256, "--max-tokens", help=_help("max_tokens")),
    engine: str = typer.Option("transformers", "--engine",
                               help="Engine of the local server started when no --endpoint is given."),
) -> None:
    """Start the Gradio chat app against a chatrec endpoint (by default a local server on the bundle)."""
    from chatrec.deps import require

    require("gradio", "the chat UI")
    from chatrec.cli.serve import secret
    from ui.app import UIConfig

    api_key = secret(api_key, api_key_file, "CHATREC_API_KEY")  # type: ignore[assignment]
    auth = secret(None, auth_file, "CHATREC_UI_AUTH")
    if endpoint:
        config = UIConfig(endpoint=endpoint, api_key=api_key, bundle=str(bundle) if bundle else None,
                          host=host, port=port, user_id=user_id, k=k, max_tokens=max_tokens, auth=auth,
                          insecure=insecure)
        _serve_ui(config)
        return

    from chatrec.bundle import Bundle
    from chatrec.paths import default_bundle
    from ui.local_server import LocalServer

    UIConfig(endpoint="http://127.0.0.1", host=host, port=port, auth=auth, insecure=insecure)  # refuse before starting
    root = Bundle(bundle or default_bundle())
    root.require("catalog.parquet")
    typer.echo(f"starting `chatrec serve --bundle {root.root} --engine {engine}` …", err=True)
    with LocalServer(root.root, engine=engine, api_key=api_key) as server:
        typer.echo(f"server ready at {server.url}", err=True)
        config = UIConfig(endpoint=server.url, api_key=api_key, bundle=str(root.root), host=host, port=port,
                          user_id=user_id, k=k, max_tokens=max_tokens, auth=auth, insecure=insecure)
        _serve_ui(config)


def _serve_ui(config: UIConfig) -> None:
    from ui.app import launch

    typer.echo(f"chatrec ui on http://{config.host}:{config.port} (server {config.endpoint})", err=True)
    launch(config, block=True)
