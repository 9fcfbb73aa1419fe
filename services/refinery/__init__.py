"""Refinery: the processes that keep a fine-tuned LLM good after it ships."""
