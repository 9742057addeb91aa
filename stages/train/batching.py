"""Which samples go into which mini-batch, process and micro-batch: pure functions of the step.

Mini-batches are sets of whole groups (the ``n`` samples of a prompt), in a seeded shuffled group
order, so the samples that share a prompt meet in one optimizer step. Within a mini-batch the loss
normalisers are the mini-batch's global counts (:mod:`stages.train.update`), so how its samples
are cut into micro-batches and spread over processes does not change the update, only float
rounding. Two cuts exist:

- **standard** (the standard forward): the mini-batch's samples dealt to the processes
  in turn (``samples[rank::world]``) and cut into micro-batches of ``optim.micro_batch``;
- **grouped** (for the shared-prefix forward): each group cut into *units* of at most
  ``optim.micro_batch`` samples, units spread over the processes by sample count (largest first,
  each to the least loaded) and packed whole into micro-batches (first fit), so a prompt is
  encoded once per unit rather than once per sample.

Every process runs the same number of micro-batches (DDP / FSDP collectives line up): a process
with fewer gets placeholders, ``None`` entries that run a masked-off copy of a real sample.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Sequence


def grouped(samples: Iterable[int], key: Callable[[int], Hashable]) -> list[list[int]]:
    """``samples`` grouped by ``key(sample)``; groups, and samples within one, in order of first
    appearance."""
    members: dict[Hashable, list[int]] = {}
    for sample in samples:
        members.setdefault(key(sample), []).append(sample)
    return list(members.values())


def group_mini_batches(
    group_ids: Sequence[int], mini_batches: int, rng: random.Random
) -> list[list[int]]:
    """Sample indices of each mini-batch: groups in shuffled order dealt round-robin, a group's
    samples in their own order."""
    members = grouped(range(len(group_ids)), group_ids.__getitem__)
    rng.shuffle(members)
    return [[s for g in members[i::mini_batches] for s in g] for i in range(mini_batches)]


def units(samples: Sequence[int], group_ids: Sequence[int], size: int) -> list[list[int]]:
    """``samples`` grouped by their group (first-appearance order), each group cut into the
    fewest pieces of at most ``size``, of near-equal sizes (a group of 4 at size 3: 2 + 2)."""
    out = []
    for group in grouped(samples, group_ids.__getitem__):
        pieces = -(-len(group) // size)
        bounds = [len(group) * k // pieces for k in range(pieces + 1)]
        out += [group[bounds[k] : bounds[k + 1]] for k in range(pieces)]
    return out


def spread(pieces: Sequence[list[int]], world: int) -> list[list[list[int]]]:
    """Units per process, largest first (stable), each to the process holding the fewest samples
    (the lowest rank on ties): balanced, and groups of equal size stay on one process."""
    out: list[list[list[int]]] = [[] for _ in range(world)]
    load = [0] * world
    for unit in sorted(pieces, key=len, reverse=True):
        rank = min(range(world), key=lambda r: (load[r], r))
        out[rank].append(unit)
        load[rank] += len(unit)
    return out


def first_fit(pieces: Sequence[list[int]], size: int) -> list[list[int]]:
    """Whole units packed into micro-batches of at most ``size`` samples (first fit, in order)."""
    bins: list[list[int]] = []
    for unit in pieces:
        target = next((b for b in bins if len(b) + len(unit) <= size), None)
        if target is None:
            bins.append(list(unit))
        else:
            target.extend(unit)
    return bins


def micro_batches(
    samples: Sequence[int],
    group_ids: Sequence[int],
    size: int,
    world: int,
    rank: int,
    *,
    grouped: bool,
) -> list[list[int | None]]:
    """This process's micro-batches of ``samples`` (``None``: a masked-off placeholder); every
    process gets the same number."""
    if not samples:
        return []
    if not grouped:
        per_rank = -(-len(samples) // world)
        local: list[int | None] = list(samples[rank::world])
        local += [None] * (per_rank - len(local))
        return [local[i : i + size] for i in range(0, per_rank, size)]
    per_process = [first_fit(u, size) for u in spread(units(samples, group_ids, size), world)]
    count = max(len(b) for b in per_process)
    mine: list[list[int | None]] = [list(b) for b in per_process[rank]]
    return mine + [[None] for _ in range(count - len(mine))]
