"""The demo task's data: support tickets the project generates itself (nothing is downloaded)."""
