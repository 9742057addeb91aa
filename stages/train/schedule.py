"""Deterministic schedules of a run: the learning rate per optimizer step and per-step seeds."""

from __future__ import annotations

import hashlib
import math

from stages.train.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) under the configured schedule."""
    optim, total = config.optim, config.trainer.steps
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(total - optim.warmup_steps, 1)
    factor = {
        "constant": 1.0,
        "linear": 1.0 - progress,
        "cosine": 0.5 * (1.0 + math.cos(math.pi * progress)),
    }[optim.schedule]
    return optim.lr * factor


def step_seed(seed: int, step: int, what: str) -> int:
    """A 32-bit seed for one use (``what``) in one training step: the same on every process and
    after a resume, different for every step and use."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{what}".encode()).digest()[:4], "little")
