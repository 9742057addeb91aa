"""Rollout backends by name: each builds an :class:`~stages.rollout.engine_api.Engine`.

A factory receives the model spec and the rollout options; heavy engines import lazily so
``--backend hf`` never needs vLLM installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stages.errors import MgpoError
from stages.rollout.engine_api import Engine


def _hf(options: Any) -> Engine:
    from stages.rollout.engine_hf import HFEngine

    return HFEngine.load(
        options.model,
        dtype=options.dtype,
        device=_this_process_device(options.device),
        micro_batch_size=options.micro_batch,
    )


def _this_process_device(device: str) -> str:
    """``auto`` is this process's own GPU when several processes share a machine (vLLM places
    itself the same way, by ``LOCAL_RANK``)."""
    import torch

    from stages.processes import processes

    if device != "auto" or not torch.cuda.is_available():
        return device
    job = processes()
    return device if job.world == 1 else f"cuda:{job.local_rank}"


def _vllm(options: Any) -> Engine:
    from stages.rollout.engine_vllm import VLLMEngine

    return VLLMEngine.load(options)


BACKENDS: dict[str, Callable[[Any], Engine]] = {"hf": _hf, "vllm": _vllm}


def make_engine(backend: str, options: Any) -> Engine:
    if backend not in BACKENDS:
        raise MgpoError(f"--backend {backend}: unknown backend (choose from {', '.join(BACKENDS)})")
    return BACKENDS[backend](options)
