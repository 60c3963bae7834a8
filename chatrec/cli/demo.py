"""CLI command: `chatrec demo` (the README's main command)."""

from __future__ import annotations

from pathlib import Path

import typer

from chatrec.cli.app import app


def _help(name: str) -> str:
    from chatrec.demo import DemoConfig

    return str(DemoConfig.__dataclass_fields__[name].metadata["help"])


@app.command("demo")
def demo(
    quick: bool = typer.Option(False, "--quick", help=_help("quick")),
    out: Path = typer.Option(None, "--out", help="Bundle directory (default: CHATREC_HOME/bundles/default)."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Stop after the bundle is built and evaluated."),
    engine: str = typer.Option("auto", "--engine", help=_help("engine")),
    port: int = typer.Option(8000, "--port", help="Port of the OpenAI-compatible endpoint."),
    ui_port: int = typer.Option(7860, "--ui-port", help="Port of the Gradio UI."),
    train_steps: int = typer.Option(None, "--train-steps", help=_help("train_steps")),
    train_minutes: float = typer.Option(None, "--train-minutes", help=_help("train_minutes")),
    seed: int = typer.Option(0, "--seed", help=_help("seed") + " Another seed gives another SID fit and "
                             "training run (for means over seeds, with --out)."),
) -> None:
    """Import MovieLens-100k, fit SIDs, extend + finetune SmolLM2, evaluate, then serve it with a chat UI.

    Re-running reuses finished stages (the manifest's config and input hashes decide what is stale).
    """
    from chatrec.demo import DemoConfig, client_snippet, run_pipeline
    from chatrec.errors import ConfigError
    from chatrec.paths import default_bundle

    config = DemoConfig(quick=quick, engine=engine, seed=seed)
    if train_minutes is not None:
        if not train_minutes > 0:
            raise ConfigError(f"`--train-minutes` must be > 0, got {train_minutes}")
        config.train_minutes = train_minutes
    if train_steps is not None:
        if train_steps < 1:
            raise ConfigError(f"`--train-steps` must be >= 1, got {train_steps}")
        config.train_steps = train_steps
    result = run_pipeline(out or default_bundle(), config, log=lambda m: typer.echo(m, err=True))
    bundle = Path(result["bundle"])
    typer.echo(f"bundle ready: {bundle}", err=True)
    if no_serve:
        return
    engine = config.engine  # resolved: the engine eval.json was measured on
    from ui.app import UIConfig, launch
    from ui.local_server import LocalServer

    typer.echo(f"starting the endpoint ({engine} engine) …", err=True)
    with LocalServer(bundle, engine=engine, port=port) as server:
        typer.echo(f"\nendpoint: {server.url}/v1  (OpenAI-compatible; model `chatrec`)")
        typer.echo(f"chat UI:  http://127.0.0.1:{ui_port}\n")
        typer.echo("call it from Python:\n\n" + client_snippet(server.url) + "\n")
        launch(UIConfig(endpoint=server.url, bundle=str(bundle), port=ui_port), block=True)
