"""Which prompts each training step rolls out: a seeded shuffle per epoch, resumable exactly.

The order of epoch ``e`` depends only on (seed, e), so a position ``(epoch, offset)`` saved in a
checkpoint is all a resumed run needs to take the very same batches an uninterrupted run would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    epoch: int = 0
    offset: int = 0


def epoch_order(ids: list[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    order = list(ids)
    if shuffle:
        random.Random(f"mgpo-data/{seed}/{epoch}").shuffle(order)
    return order


def take(
    ids: list[str], position: Position, count: int, *, seed: int, shuffle: bool
) -> tuple[list[str], Position]:
    """The next ``count`` prompt ids from ``position``, wrapping into new epochs as needed."""
    if not ids:
        raise ValueError("no prompts to take from")
    batch: list[str] = []
    epoch, offset = position.epoch, position.offset
    order = epoch_order(ids, seed, epoch, shuffle)
    while len(batch) < count:
        if offset >= len(order):
            epoch, offset = epoch + 1, 0
            order = epoch_order(ids, seed, epoch, shuffle)
        step = min(count - len(batch), len(order) - offset)
        batch.extend(order[offset : offset + step])
        offset += step
    return batch, Position(epoch, offset)
