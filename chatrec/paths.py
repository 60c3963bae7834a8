"""Where chatrec keeps caches and default bundles (`CHATREC_HOME`, default `~/.cache/chatrec`)."""

from __future__ import annotations

import os
from pathlib import Path


def chatrec_home() -> Path:
    """The root for caches, converted models and default bundles."""
    home = Path(os.environ.get("CHATREC_HOME", Path.home() / ".cache" / "chatrec")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir(*parts: str) -> Path:
    """A sub-directory of `CHATREC_HOME/cache`, created on demand."""
    path = chatrec_home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_bundle() -> Path:
    """The bundle used when a command is given none: `CHATREC_HOME/bundles/default`."""
    return chatrec_home() / "bundles" / "default"
