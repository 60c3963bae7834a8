"""CLI commands: serve (registered on chatrec.cli.app groups)."""
