"""The champion at base speed: its LoRA adapter merged into the base weights, served by a
vLLM server of its own and switched blue/green (``python -m refinery.deployer``)."""
