"""The inference gateway: OpenAI-compatible API on vLLM, prediction logging, feedback."""
