"""End-to-end tests: the CLI, server and UI driven the way a user drives them."""
