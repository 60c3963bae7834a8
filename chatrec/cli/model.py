"""CLI commands: model (registered on chatrec.cli.app groups)."""
