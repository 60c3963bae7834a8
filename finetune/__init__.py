"""chatrec finetune package."""
