"""A policy's architecture without its weights: its config, and its parameters on the meta device.

The memory plan (``mgpo train --plan``) needs exact parameter counts and shapes before any weight
is loaded. They come from the model's own config, built on PyTorch's meta device (shapes, no
storage), never from a guess:

- the built-in ``tiny`` / ``tiny-text``: the cached folder's ``config.json``, else the config the
  tiny builder would use (no weights are built);
- a local folder: its ``config.json`` (and ``preprocessor_config.json`` for the image budget);
  a LoRA adapter folder: its base model's;
- a hub id: the published architecture configs shipped in ``configs/`` for Qwen2.5-VL-3B/7B-Instruct
  (offline), else the Hugging Face cache, else the hub itself.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from stages.errors import MgpoError
from stages.models.adapters import base_spec
from stages.models.loading import BUILTIN, model_kind, resolve_model
from stages.models.quiet import quiet_transformers

# Hub ids whose architecture ships with mgpo (stages/models/configs/), for offline plans.
SHIPPED = {
    "Qwen/Qwen2.5-VL-3B-Instruct": "qwen2_5_vl_3b.json",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl_7b.json",
}
# max_pixels of those models' published preprocessor_config.json (3,584 x 3,584).
SHIPPED_MAX_PIXELS = 12_845_056
# transformers' Qwen2-VL image processor default, for a folder that does not say.
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


@dataclass(frozen=True)
class Parameter:
    """One parameter tensor: its shape, its FSDP unit and whether it is in the vision tower."""

    name: str
    shape: tuple[int, ...]
    unit: str  # the decoder layer / vision block holding it ("" : the root module)
    vision: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class TextShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


@dataclass(frozen=True)
class VisionShape:
    hidden: int
    intermediate: int
    depth: int
    heads: int
    patch: int
    merge: int
    max_pixels: int  # the image processor's pixel budget per image

    @property
    def tokens_per_image(self) -> int:
        """Language-model tokens of one image at the pixel budget (after the merge)."""
        return self.max_pixels // (self.patch * self.merge) ** 2


@dataclass(frozen=True)
class Architecture:
    name: str
    parameters: tuple[Parameter, ...]  # tied weights once
    text: TextShape
    vision: VisionShape | None  # None: a text-only causal LM
    linear_layers: tuple[str, ...] = ()  # the language model's (what LoRA may adapt)


def is_vision_parameter(name: str) -> bool:
    """True for the vision tower's parameters (what ``model.freeze_vision`` freezes)."""
    return ".visual." in f".{name}"


def language_linear_layers(model: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules of the language model: not in the vision tower, not
    the output head (the trainer reads its weight directly). What LoRA may adapt."""
    head = model.get_output_embeddings()
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and not is_vision_parameter(f"{name}.weight")
    ]


def shipped_config(name: str) -> Any:
    """The shipped architecture config of hub id ``name`` (a transformers config, no weights)."""
    from transformers import AutoConfig

    text = resources.files("stages.models").joinpath("configs", SHIPPED[name]).read_text()
    data = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    return AutoConfig.for_model(**data)


def architecture(spec: str, *, trust_remote_code: bool = False) -> Architecture:
    """The architecture of ``spec`` (``tiny``, a local folder or a hub id), weights never read."""
    config, max_pixels = _config(spec, trust_remote_code)
    kind = model_kind(config, spec)
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if kind == "vision" else AutoModelForCausalLM
    try:
        with quiet_transformers(), torch.device("meta"):
            model = auto.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - any failure is the model's config
        raise MgpoError(f"model {spec}: cannot build its architecture: {error}") from error
    return Architecture(
        name=spec,
        parameters=_parameters(model),
        text=_text_shape(config.get_text_config()),
        vision=_vision_shape(config.vision_config, max_pixels) if kind == "vision" else None,
        linear_layers=tuple(language_linear_layers(model)),
    )


def _parameters(model: torch.nn.Module) -> tuple[Parameter, ...]:
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    units = [n for n, m in model.named_modules() if n and type(m).__name__ in no_split]
    out = []
    for name, param in model.named_parameters():  # tied weights are listed once
        unit = max((u for u in units if name.startswith(u + ".")), key=len, default="")
        out.append(Parameter(name, tuple(param.shape), unit, is_vision_parameter(name)))
    return tuple(out)


def _text_shape(text: Any) -> TextShape:
    heads = text.num_attention_heads
    return TextShape(
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
    )


def _vision_shape(vision: Any, max_pixels: int) -> VisionShape:
    return VisionShape(
        hidden=vision.hidden_size,
        intermediate=vision.intermediate_size,
        depth=vision.depth,
        heads=vision.num_heads,
        patch=vision.patch_size,
        merge=vision.spatial_merge_size,
        max_pixels=max_pixels,
    )


def _config(spec: str, trust_remote_code: bool) -> tuple[Any, int]:
    """(transformers config, pixel budget per image) of ``spec``, reading no weights."""
    from transformers import AutoConfig

    spec = base_spec(spec)  # a merged adapter has its base's architecture
    if spec in BUILTIN:
        from stages.models.tiny import MAX_PIXELS, builtin_config, tiny_folder

        folder = tiny_folder(kind=BUILTIN[spec])
        if (folder / "config.json").is_file():
            return AutoConfig.from_pretrained(folder), _folder_max_pixels(folder, MAX_PIXELS)
        return builtin_config(BUILTIN[spec]), MAX_PIXELS
    path = resolve_model(spec)  # a local folder with config.json, or a hub id
    if Path(path).is_dir():
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        return config, _folder_max_pixels(Path(path), DEFAULT_MAX_PIXELS)
    if spec in SHIPPED:
        return shipped_config(spec), SHIPPED_MAX_PIXELS
    return _hub_config(spec, trust_remote_code)


def _hub_config(spec: str, trust_remote_code: bool) -> tuple[Any, int]:
    """A hub id's config from the Hugging Face cache, else from the hub."""
    from transformers import AutoConfig

    load = {"trust_remote_code": trust_remote_code}
    hub_logger = logging.getLogger("huggingface_hub")  # its retry warnings: the line says it all
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        with quiet_transformers():
            try:
                config = AutoConfig.from_pretrained(spec, local_files_only=True, **load)
            except OSError:
                config = AutoConfig.from_pretrained(spec, **load)
    except Exception as error:  # noqa: BLE001 - unreachable hub, unknown id, bad config
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MgpoError(
            f"model {spec}: cannot read its config for the memory plan (not a local folder, not"
            f" one of the shipped architectures {', '.join(SHIPPED)}, not in the Hugging Face"
            f" cache, and the hub did not answer: {first})"
        ) from None
    finally:
        hub_logger.setLevel(level)
    return config, _cached_max_pixels(spec)


def _cached_max_pixels(spec: str) -> int:
    from huggingface_hub import hf_hub_download

    try:
        found = hf_hub_download(spec, "preprocessor_config.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: the processor's default budget
        return DEFAULT_MAX_PIXELS
    return _folder_max_pixels(Path(found).parent, DEFAULT_MAX_PIXELS)


def _folder_max_pixels(folder: Path, default: int) -> int:
    """``max_pixels`` of a folder's image processor config (either spelling), else ``default``."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return default
    data = json.loads(path.read_text())
    size = data.get("size") or {}
    value = data.get("max_pixels") or size.get("max_pixels") or size.get("longest_edge")
    return int(value) if value else default
