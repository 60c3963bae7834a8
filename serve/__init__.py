"""chatrec serve package."""
