"""mgpo: reinforcement learning for vision-language models on verifiable math (shared CLI helpers)."""

__version__ = "0.1.0"
