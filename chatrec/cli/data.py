"""CLI commands: data (registered on chatrec.cli.app groups)."""
