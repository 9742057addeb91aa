"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory ``checkpoints/step-K`` holds:

- ``layout.json``: the strategy, the number of processes and every saved tensor's full shape;
- replicated weights (``trainer.strategy: ddp``): ``model.safetensors`` and
  ``optimizer.safetensors`` from the main process (every process holds the same), plus the
  model's ``config.json`` and processor files, so the checkpoint loads as a model folder;
- sharded weights (``fsdp``): ``model-rank00000.safetensors``, ``optimizer-rank00000.safetensors``
  ... one pair per process holding that process's shards, written by every process at once (no
  gather, no host copy of the whole model); they resume only on the same number of processes;
- under LoRA (``model.lora``) only the adapters, in peft's format: ``adapter_model.safetensors``
  (or ``adapter_model-rank00000.safetensors`` ... under FSDP) beside ``adapter_config.json``, so
  a DDP checkpoint loads as an adapter folder; the base weights come from ``model.name``;
- ``optimizer.json``: AdamW's hyper-parameters;
- ``rng-rank00000.safetensors`` + ``.json`` per process: its torch CPU generator, the CUDA
  generator of its own device and its Python ``random`` state;
- ``state.json``: step, data position, optimizer steps; written last, it marks the checkpoint
  complete.

Optimizer tensors are keyed ``PARAM_NAME:STATE`` (``model.lm_head.weight:exp_avg``), not by
position, so a mismatch is caught by name. Everything is written under ``step-K.tmp`` and renamed
by the main process once every process has written its part, so a run killed mid-save keeps its
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from stages.errors import MgpoError
from stages.train.dist import Distributed
from stages.train.sharding import is_sharded, like, local, unique_state

PATTERN = re.compile(r"^step-(\d{6})$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if PATTERN.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def _rank_file(kind: str, rank: int, suffix: str = "safetensors") -> str:
    return f"{kind}-rank{rank:05d}.{suffix}"


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return local(tensor).detach().cpu().contiguous()


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer, names: dict[int, str]
) -> dict[str, torch.Tensor]:
    out = {}
    for param, entry in optimizer.state.items():
        for key, value in entry.items():
            if not torch.is_tensor(value):
                raise MgpoError(f"optimizer state {key!r} is not a tensor: cannot checkpoint it")
            out[f"{names[id(param)]}:{key}"] = _cpu(value)
    return out


def _hyper_parameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def save_checkpoint(
    run_dir: Path,
    step: int,
    dist: Distributed,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep_last: int,
    write_extras: Callable[[Path], None] | None = None,
    *,
    weights: dict[str, torch.Tensor] | None = None,
    stem: str = "model",
) -> Path:
    """Write checkpoint ``step`` (every process calls this) and drop all but the newest
    ``keep_last``; ``write_extras(folder)`` adds files on the main process (config, processor).
    ``weights``: the tensors to save, by key (default: ``module``'s whole state), in
    ``STEM.safetensors`` (``STEM-rankNNNNN.safetensors`` when sharded)."""
    final = run_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    state = unique_state(module) if weights is None else weights
    sharded = any(is_sharded(t) for t in state.values())
    names = {id(p): n for n, p in module.named_parameters()}
    if sharded or dist.is_main:
        suffix = _rank_file("", dist.rank)[1:] if sharded else "safetensors"
        model_name = f"{stem}-{suffix}" if sharded else f"{stem}.safetensors"
        save_file({n: _cpu(t) for n, t in state.items()}, str(tmp / model_name))
        opt_name = f"optimizer-{suffix}" if sharded else "optimizer.safetensors"
        save_file(_optimizer_tensors(optimizer, names), str(tmp / opt_name))
    _save_rng(tmp, dist)
    dist.barrier()
    if dist.is_main:
        layout = {
            "strategy": "fsdp" if sharded else "ddp",
            "processes": dist.world,
            "weights": stem,
            "shapes": {n: list(t.shape) for n, t in state.items()},
        }
        (tmp / "layout.json").write_text(json.dumps(layout))
        (tmp / "optimizer.json").write_text(json.dumps({"groups": _hyper_parameters(optimizer)}))
        if write_extras is not None:
            write_extras(tmp)
        (tmp / "state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(
    path: Path,
    dist: Distributed,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    weights: dict[str, torch.Tensor] | None = None,
    stem: str = "model",
) -> dict[str, Any]:
    """Restore weights (``weights``, default ``module``'s whole state: as saved), optimizer and
    this process's RNG in place; return the trainer state."""
    state = unique_state(module) if weights is None else weights
    try:
        layout = json.loads((path / "layout.json").read_text())
        sharded = layout["strategy"] == "fsdp"
        if layout["processes"] != dist.world:
            raise MgpoError(
                f"{path}: written by {layout['processes']} processes; resume it with the same"
                f" number (this run has {dist.world})"
            )
        if layout.get("weights", "model") != stem:
            raise MgpoError(f"{path}: holds {layout.get('weights', 'model')} weights, not {stem}")
        suffix = _rank_file("", dist.rank)[1:] if sharded else "safetensors"
        saved = load_file(str(path / f"{stem}{'-' if sharded else '.'}{suffix}"))
        moments = load_file(str(path / f"optimizer{'-' if sharded else '.'}{suffix}"))
        groups = json.loads((path / "optimizer.json").read_text())["groups"]
        trainer_state = json.loads((path / "state.json").read_text())
        _load_rng(path, dist)
    except (OSError, ValueError, KeyError) as error:
        raise MgpoError(f"{path}: unreadable checkpoint ({error})") from None
    _load_weights(path, state, saved, layout["shapes"])
    _load_optimizer(path, module, optimizer, moments, groups)
    return trainer_state


def _load_weights(
    path: Path, state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], shapes: dict
) -> None:
    """Copy saved tensors into the model's ``state`` (its shards under FSDP); every name must
    match."""
    if set(shapes) != set(state) or set(weights) != set(state):
        missing = sorted((set(state) ^ set(shapes)) | (set(state) ^ set(weights)))
        raise MgpoError(f"{path}: does not match the model (first difference: {missing[0]})")
    with torch.no_grad():
        for name, tensor in state.items():
            target = local(tensor)
            if list(tensor.shape) != shapes[name] or target.shape != weights[name].shape:
                raise MgpoError(f"{path}: {name} has shape {shapes[name]}, the model's differs")
            target.copy_(weights[name])


def _load_optimizer(
    path: Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    moments: dict[str, torch.Tensor],
    groups: list[dict[str, Any]],
) -> None:
    if len(groups) != len(optimizer.param_groups):
        raise MgpoError(f"{path}: {len(groups)} optimizer groups, this run has one")
    for group, saved in zip(optimizer.param_groups, groups, strict=True):
        group.update({k: tuple(v) if k == "betas" else v for k, v in saved.items()})
    params = dict(module.named_parameters())
    entries: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in moments.items():
        name, field = key.rsplit(":", 1)
        if name not in params:
            raise MgpoError(f"{path}: optimizer state for unknown parameter {name}")
        entries.setdefault(name, {})[field] = value
    optimizer.state.clear()
    for name, param in params.items():  # in parameter order, as the optimizer made them
        entry = entries.get(name)
        if entry is None:
            continue
        optimizer.state[param] = {
            k: v if k == "step" else like(param, v.to(local(param).dtype)) for k, v in entry.items()
        }


def _save_rng(folder: Path, dist: Distributed) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if dist.device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(dist.device)
    save_file(tensors, str(folder / _rank_file("rng", dist.rank)))
    version, values, gauss = random.getstate()
    python = {"version": version, "values": list(values), "gauss": gauss}
    (folder / _rank_file("rng", dist.rank, "json")).write_text(json.dumps(python))


def _load_rng(folder: Path, dist: Distributed) -> None:
    tensors = load_file(str(folder / _rank_file("rng", dist.rank)))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and dist.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], dist.device)
    python = json.loads((folder / _rank_file("rng", dist.rank, "json")).read_text())
    random.setstate((python["version"], tuple(python["values"]), python["gauss"]))
