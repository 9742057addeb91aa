"""The processes of one job: which share of the work is this process's, and meeting the others.

``accelerate launch`` and ``torchrun`` start K copies of a command and describe them in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). The
stages split their work by rank rather than by launcher: rollout batch ``j`` belongs to process
``j % K`` (and so do its scores, its predictions), each process writes its own parts of one shard
set, and the main process seals the set once every process has reached the barrier. Processes
meet on shared storage for the data and through a process group only to wait for each other and
to swap small Python objects.

A command started alone is a job of one process: no process group, every call below is free.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from stages.errors import MgpoError

# Long enough for the slowest process's share of a rollout phase (torch's default is 10 minutes).
DEFAULT_TIMEOUT_S = 7200.0


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: ``rank`` of ``world``, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether work item ``index`` (a batch, a part) is this process's: ``index % world``."""
        return index % self.world == self.rank

    def rounds(self, items: int) -> int:
        """Rounds every process goes through for ``items`` work items dealt round-robin (the same
        number on every process, so collective engines are called alike everywhere)."""
        return -(-items // self.world)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def main_only(self, work: Callable[[], Any]) -> None:
        """Run ``work`` on the main process while the others wait (e.g. writing a file all will
        read). A user error there (``MgpoError``) is raised on every process, so all stop with
        the same one line instead of waiting for ever."""
        error = None
        if self.is_main:
            try:
                work()
            except MgpoError as failure:
                error = str(failure)
        error = self.gather(error)[0]  # also the barrier
        if error is not None:
            raise MgpoError(error)

    def gather(self, value: Any, group: Any = None) -> list[Any]:
        """``value`` of every process (of ``group``), in rank order (small picklable objects; in
        memory only, never read back from disk)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(out, value, group=group)
        return out


SINGLE = Processes()


def processes(timeout_s: float = DEFAULT_TIMEOUT_S) -> Processes:
    """This process's place: the process group's if one is up (the trainer's), else the one the
    launcher describes in the environment, joined now (gloo, plus NCCL for CUDA tensors)."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    import torch

    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Processes(dist.get_rank(), dist.get_world_size(), local)
