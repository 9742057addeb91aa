"""How the policy is spread over the processes: DDP replicas or FSDP2 shards, and their tensors.

- ``ddp``: every process holds the whole fp32 model and optimizer; DistributedDataParallel
  averages gradients (not wrapped at all with one process).
- ``fsdp``: torch's ``fully_shard`` (FSDP2) on every block the model names in
  ``_no_split_modules`` (decoder layers, vision blocks), then on the root (the
  :class:`~stages.train.forward.LogprobModel`, which owns the embeddings, the final norm and the
  ``lm_head``). Parameters, gradients and AdamW state are fp32 shards (``DTensor``); a block's
  parameters are gathered in the compute dtype just before its forward and freed after it
  (``MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=float32)``). It is applied here, not
  through accelerate, so it runs on CPUs with gloo as well as on GPUs with NCCL.

The helpers turn a parameter into what one process holds (``local``) and back (``like``), and
gather full tensors one at a time, collectively (``full_tensors``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from stages.train.dist import Distributed


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (its ``_no_split_modules``), in module order; also once
    sharded (FSDP2 gives each a subclass of its own, ``FSDPQwen2_5_VLDecoderLayer``)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def shard(root: nn.Module, dist: Distributed, compute_dtype: torch.dtype) -> nn.Module:
    """FSDP2 over the blocks of ``root.model`` and then ``root``; parameters move to the device."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world,))
    param_dtype = None if compute_dtype == torch.float32 else compute_dtype
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in blocks(root.model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)
    return root


def replicate(root: nn.Module, dist: Distributed) -> nn.Module:
    """DDP over ``root`` (already on its device); with one process, ``root`` itself."""
    if dist.world == 1:
        return root
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(root, device_ids=ids)


def is_sharded(tensor: Tensor) -> bool:
    return isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """What this process holds of ``tensor``: its shard, or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def like(param: Tensor, value: Tensor) -> Tensor:
    """``value`` (a local shard, e.g. read from a checkpoint) laid out like ``param``."""
    if not isinstance(param, DTensor):
        return value.to(param.device)
    return DTensor.from_local(
        value.to(param.to_local().device),
        param.device_mesh,
        param.placements,
        shape=param.shape,
        stride=param.stride(),
        run_check=False,
    )


def unique_state(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with each tensor once: tied weights (embeddings = ``lm_head``)
    keep their first name, as ``save_pretrained`` does; loading ties them again."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


def full_tensors(
    named: Iterator[tuple[str, Tensor]] | dict[str, Tensor], *, cpu: bool = False
) -> Iterator[tuple[str, Tensor]]:
    """Full tensors by name, one at a time: a shard is all-gathered (every process must iterate
    to the end, in the same order), a replicated tensor is passed through."""
    items = named.items() if isinstance(named, dict) else named
    for name, tensor in items:
        full = tensor.detach()
        if isinstance(full, DTensor):
            full = full.full_tensor()
        yield name, (full.cpu() if cpu else full)
