"""chatrec tokenizer_ext package."""
