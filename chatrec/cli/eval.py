"""CLI commands: eval (registered on chatrec.cli.app groups)."""
