"""chatrec ui package."""
