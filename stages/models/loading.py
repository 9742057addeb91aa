"""Loading a policy: the built-in ``tiny`` model, a local folder, or a Hugging Face hub id.

``load_policy`` returns the model and a ``PolicyIO`` (its processor behind one interface), so
stages never care whether the policy sees images (Qwen2-VL family) or only text (a causal LM such
as SmolLM2). Which kind a folder is comes from its ``config.json`` ``model_type``. A LoRA adapter
folder loads as its base model with the adapter merged in (:mod:`stages.models.adapters`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stages.errors import MgpoError
from stages.models.adapters import adapter_base, base_spec, is_adapter_folder, merge_adapter
from stages.models.policy_io import PolicyIO, text_io, vision_io
from stages.models.quiet import quiet_transformers

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
# Built-in models (spec -> tiny kind), built into the cache on first use.
BUILTIN = {"tiny": "vision", "tiny-text": "text"}
# Image-text models whose processor expands images the Qwen2-VL way (see policy_io.VisionIO).
VISION_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
_DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def resolve_model(spec: str) -> str:
    """A local folder for a built-in (``tiny``, ``tiny-text``) or existing folder; else a hub id."""
    if spec in BUILTIN:
        from stages.models.tiny import cache_root, tiny_model_path

        try:
            return str(tiny_model_path(kind=BUILTIN[spec]))
        except OSError as error:
            raise MgpoError(
                f"cannot build the {spec} model in {cache_root()} (set MGPO_CACHE): {error}"
            ) from None
    path = Path(spec).expanduser()
    if path.exists():
        if is_adapter_folder(path):
            return str(path)
        if not (path / "config.json").is_file():
            raise MgpoError(f"model folder {spec} has no config.json")
        return str(path)
    if spec.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(spec):
        raise MgpoError(f"model folder not found: {spec}")
    return spec


def config_path(spec: str) -> str:
    """Where ``spec``'s model config is: ``resolve_model`` of the spec, or of an adapter
    folder's base (a merged adapter has its base's architecture)."""
    return resolve_model(base_spec(spec))


def _dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise MgpoError(f"unknown dtype '{dtype}' (one of {', '.join(_DTYPES)})")
    return _DTYPES[dtype]


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_vision_processor(path: str, **kwargs: Any) -> Any:
    """The stock processor if it loads; else our image-only one (no torchvision, see processor)."""
    from transformers import AutoProcessor

    from stages.models.processor import QwenVLImageProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (ImportError, OSError, ValueError, TypeError, KeyError):
        return QwenVLImageProcessor.from_pretrained(path, **kwargs)


def _load_vision(path: str, config: Any, name: str, load: dict) -> tuple[Any, PolicyIO]:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, **load)
    hub = {k: load[k] for k in ("trust_remote_code",) if k in load}
    processor = load_vision_processor(path, **hub)
    return model, vision_io(processor, model.config, model.generation_config, name)


def _load_text(path: str, config: Any, name: str, load: dict) -> tuple[Any, PolicyIO]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, **load)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=load["trust_remote_code"])
    return model, text_io(tokenizer, model.config, model.generation_config, name)


def model_kind(config: Any, name: str) -> str:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type in VISION_MODEL_TYPES:
        return "vision"
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise MgpoError(
            f"model {name}: image-text model type '{model_type}' is not supported yet"
            f" (supported: {', '.join(VISION_MODEL_TYPES)}, or a text-only causal LM)"
        )
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "text"
    raise MgpoError(
        f"model {name}: model type '{model_type}' is neither image-text nor a causal LM"
    )


_LOADERS: dict[str, Callable[[str, Any, str, dict], tuple[Any, PolicyIO]]] = {
    "vision": _load_vision,
    "text": _load_text,
}


def load_policy(
    model: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> tuple[Any, PolicyIO]:
    """Load ``model`` (``"tiny"``, a local folder or a hub id) and its ``PolicyIO``.

    The model is returned in eval mode on ``device`` (``"auto"``: CUDA when there is one).
    Anything that prevents loading becomes one ``MgpoError`` line naming the model. An adapter
    folder loads its base in float32, merges the adapter, then casts to ``dtype``.
    """
    from transformers import AutoConfig

    path = resolve_model(model)
    if is_adapter_folder(path):
        base, io = load_policy(
            adapter_base(path),
            dtype="float32",
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        policy = merge_adapter(base, path)
        wanted = _dtype(dtype)
        if wanted == "auto":
            wanted = getattr(policy.config, "dtype", None) or torch.float32
        policy.to(_device(device), wanted)
        policy.eval()
        return policy, io
    load: dict[str, Any] = {"dtype": _dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        load["attn_implementation"] = attn_implementation
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        loader = _LOADERS[model_kind(config, model)]
        with quiet_transformers():
            policy, io = loader(path, config, model, load)
    except MgpoError:
        raise
    except Exception as error:  # noqa: BLE001 - any load failure is the user's model spec
        where = "" if Path(path).exists() else " from the Hugging Face hub (no such local folder)"
        raise MgpoError(f"cannot load model '{model}'{where}: {_first_line(error)}") from error
    policy.to(_device(device))
    policy.eval()
    return policy, io
