"""CLI commands: demo (registered on chatrec.cli.app groups)."""
