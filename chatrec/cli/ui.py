"""CLI commands: ui (registered on chatrec.cli.app groups)."""
