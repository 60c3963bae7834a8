"""The `chatrec` CLI: a Typer app whose command groups mirror the pipeline.

Each module below registers its commands on the groups in `chatrec.cli.app`; commands are a
few lines over the library and import heavy dependencies inside their bodies.
"""

from chatrec.cli import (  # noqa: F401  (imported for their command registrations)
    data,
    demo,
    eval,
    model,
    serve,
    sids,
    train,
    ui,
)
from chatrec.cli.app import app, main

__all__ = ["app", "main"]
