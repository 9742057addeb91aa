"""LoRA adapters on the policy (``model.lora``), built with peft.

What trains: ``W x + (alpha / rank) B A x`` on the language model's linear layers whose name ends
with one of ``model.lora.target_modules`` (peft's rule). A starts random (seeded by
``trainer.seed``, so the same on every process), B at zero: the adapted policy starts exactly at
the base. Nothing else trains: the vision tower gets no adapter, and the output head cannot take
one (the trainer reads its weight directly for the chunked log-probs).

Precision: the frozen base weights are held in the compute dtype (they never step, so float32
masters would buy nothing; this is what lets a 7B policy fit one GPU), the adapters and their AdamW
moments in float32.

Names: peft wraps each adapted ``nn.Linear`` in place, so ``...q_proj.weight`` becomes
``...q_proj.base_layer.weight`` beside ``...q_proj.lora_A.default.weight`` (rank x in) and
``...q_proj.lora_B.default.weight`` (out x rank). The weights leave the trainer

- merged (``final/`` by default; the vLLM engine's weights): under the base names,
  ``W + (alpha / rank) B A`` in float32, one layer at a time (:meth:`Adapters.merged`);
- as an adapter (checkpoints, ``trainer.export: adapter``): peft's file format, keyed
  ``base_model.model.NAME`` without the adapter's name, beside peft's ``adapter_config.json``,
  so ``PeftModel.from_pretrained`` and every ``--model`` option load the folder.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stages.errors import MgpoError
from stages.models.adapters import import_peft
from stages.models.architecture import Architecture, Parameter, language_linear_layers
from stages.train.config import LoraConfig

ADAPTER = "default"  # peft's name for the one adapter
PEFT_PREFIX = "base_model.model."  # peft's key prefix in adapter_model.safetensors
_LAYER_PART = re.compile(
    r"^(.*)\.(base_layer\.weight|base_layer\.bias|lora_[AB]\.default\.weight)$"
)


def is_target(layer: str, targets: Iterable[str]) -> bool:
    """peft's rule: the layer's name is a target or ends with ``.`` + a target."""
    return any(layer == t or layer.endswith(f".{t}") for t in targets)


def select_layers(linear: Iterable[str], lora: LoraConfig, model: str) -> list[str]:
    """The linear layers ``lora`` adapts, or one line naming a target that matches none."""
    linear = list(linear)
    for target in lora.target_modules:
        if not any(is_target(name, (target,)) for name in linear):
            ends = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise MgpoError(
                f"model.lora.target_modules: '{target}' matches no linear layer of the language"
                f" model of {model} (its layers end in: {', '.join(ends)})"
            )
    return [name for name in linear if is_target(name, lora.target_modules)]


def adapter_parameters(arch: Architecture, lora: LoraConfig) -> tuple[Parameter, ...]:
    """The adapters' tensors on a model's architecture (for the memory plan): A (rank x in) and
    B (out x rank) per adapted layer, in that layer's FSDP unit."""
    by_name = {p.name: p for p in arch.parameters}
    out = []
    for layer in select_layers(arch.linear_layers, lora, arch.name):
        base = by_name[f"{layer}.weight"]
        rows, columns = base.shape
        for part, shape in (("lora_A", (lora.rank, columns)), ("lora_B", (rows, lora.rank))):
            name = f"{layer}.{part}.{ADAPTER}.weight"
            out.append(Parameter(name, shape, base.unit, False))
    return tuple(out)


def base_name(model: str) -> str:
    """The model spec an adapter folder names as its base: a folder by its absolute path (the
    folder is read from anywhere later), a built-in name or hub id as it is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


class Adapters:
    """The LoRA adapters of one policy module, added in place by :meth:`add`."""

    def __init__(self, peft_config: Any, scales: dict[str, float]) -> None:
        self.peft_config = peft_config
        self.scales = scales  # adapted layer name -> alpha / rank

    @classmethod
    def add(
        cls, model: nn.Module, lora: LoraConfig, name: str, compute_dtype: torch.dtype
    ) -> Adapters:
        """Freeze ``model``, add adapters to the layers ``lora`` names, hold the base weights in
        ``compute_dtype`` and the adapters in float32."""
        peft = import_peft()
        from peft.tuners.lora import LoraLayer

        layers = select_layers(language_linear_layers(model), lora, name)
        config = peft.LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=layers,
            bias="none",
            base_model_name_or_path=base_name(name),
        )
        model.requires_grad_(False)
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        for param_name, param in model.named_parameters():
            is_adapter = ".lora_A." in param_name or ".lora_B." in param_name
            param.data = param.data.to(torch.float32 if is_adapter else compute_dtype)
            param.requires_grad_(is_adapter)
        scales = {
            layer: float(module.scaling[ADAPTER])
            for layer, module in model.named_modules()
            if isinstance(module, LoraLayer)
        }
        return cls(config, scales)

    # -- what leaves the trainer ------------------------------------------------------------

    @staticmethod
    def state(module: nn.Module) -> dict[str, Tensor]:
        """The adapters' parameters by their key in peft's adapter file (checkpoints, export)."""
        return {
            PEFT_PREFIX + name.replace(f".{ADAPTER}.", "."): param
            for name, param in module.named_parameters()
            if param.requires_grad
        }

    def merged(self, named: Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
        """``named`` (full tensors by module name) with every adapted layer merged: its weight
        as ``W + scale B A`` in float32 under the base name, its bias renamed, A and B gone.
        A layer's three tensors are held until the last of them arrives."""
        pending: dict[str, dict[str, Tensor]] = {}
        for name, tensor in named:
            match = _LAYER_PART.match(name)
            if match is None or match.group(1) not in self.scales:
                yield name, tensor
                continue
            layer, part = match.groups()
            if part == "base_layer.bias":
                yield f"{layer}.bias", tensor
                continue
            parts = pending.setdefault(layer, {})
            parts[part.split(".")[0]] = tensor
            if len(parts) == 3:
                del pending[layer]
                delta = parts["lora_B"].float() @ parts["lora_A"].float()
                yield f"{layer}.weight", parts["base_layer"].float() + self.scales[layer] * delta
        if pending:
            raise MgpoError(f"LoRA layer {next(iter(pending))}: its tensors were not all given")

    def write_config(self, folder: Path) -> None:
        """peft's ``adapter_config.json`` (rank, alpha, layers, base model) into ``folder``."""
        self.peft_config.save_pretrained(str(folder))

    # -- the base policy ----------------------------------------------------------------------

    @contextlib.contextmanager
    def off(self, module: nn.Module) -> Iterator[None]:
        """The base policy inside the block: every adapter scaled by 0 (adds exactly zero)."""
        from peft.tuners.lora import LoraLayer

        layers = [m for m in module.modules() if isinstance(m, LoraLayer)]
        for layer in layers:
            layer.set_scale(ADAPTER, 0.0)
        try:
            yield
        finally:
            for layer in layers:
                layer.set_scale(ADAPTER, 1.0)
