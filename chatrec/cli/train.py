"""CLI commands: train (registered on chatrec.cli.app groups)."""
