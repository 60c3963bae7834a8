"""Finetuning: training conversations, reasoning traces, the LoRA recipe, continual runs, export."""
