"""The processes of a training run: one per device, joined in one process group.

``accelerate launch`` and ``torchrun`` both describe the job in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): every process joins that group
(gloo for CPU tensors, plus NCCL for GPU tensors) with the recipe's collective timeout. A process
started alone makes a group of one from an in-memory store, so FSDP's device mesh, and every
collective below, exists in one process too and the code has no single-process branch.

The timeout matters because a process waits in a barrier for the slowest one's share of a
rollout phase (and for the main process's checkpoint and export): torch's default (10 minutes)
can be shorter than that in the paper's setting.

:class:`Distributed` is the job's :class:`~stages.processes.Processes` (what the rollout, score
and eval stages split their work by) plus this process's device and the reductions training
needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from stages.errors import MgpoError
from stages.processes import Processes


@dataclass(frozen=True)
class Distributed(Processes):
    """This process's place in the run: rank, number of processes, local rank and its device."""

    device: torch.device = torch.device("cpu")

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a small vector over all processes (float64, one all-reduce)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum of a small vector over all processes."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: list[float], op: dist.ReduceOp) -> list[float]:
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes, in place; returns it."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def _device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise MgpoError("trainer.device cuda: no CUDA device is available")
    if preference != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise MgpoError(
                f"process with LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str = "auto", timeout_s: float = 7200.0) -> Distributed:
    """Join (or make) the process group; safe to call again (the first call's timeout stays)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = _device(device, local_rank)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if where.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(
                backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
            )
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device=where)


def shutdown() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()
