"""CLI commands: sids (registered on chatrec.cli.app groups)."""
