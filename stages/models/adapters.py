"""LoRA adapter folders as models: wherever a model is expected, a peft adapter folder means its
base model with the adapter merged in.

An adapter folder holds ``adapter_config.json`` (peft's, naming the base model in
``base_model_name_or_path``: a built-in name, a folder or a hub id) and
``adapter_model.safetensors``, and no ``config.json`` of its own: a run's ``final/`` under
``trainer.export: adapter``, a LoRA run's checkpoint, or any peft adapter. The base is loaded
first (in float32, so the merge keeps the adapter's small update), the adapter applied with peft
and merged into the weights; what comes out is a plain transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.errors import MgpoError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_folder(spec: str | Path) -> bool:
    """True for a folder with a peft ``adapter_config.json`` and no model ``config.json``."""
    path = Path(spec).expanduser()
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter folder names (``base_model_name_or_path``), or one line."""
    path = Path(folder).expanduser() / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise MgpoError(f"{path}: unreadable adapter config ({reason})") from None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not isinstance(base, str) or not base:
        raise MgpoError(f"{path}: names no base model (base_model_name_or_path)")
    if data.get("peft_type", "LORA") != "LORA":
        raise MgpoError(f"{path}: a {data.get('peft_type')} adapter; only LoRA adapters load")
    return base


def base_spec(spec: str) -> str:
    """``spec`` itself, or for an adapter folder the model its chain of bases ends in (what to
    read a config, a tokenizer or a processor from: merging changes no shape)."""
    seen: set[str] = set()
    while is_adapter_folder(spec):
        if spec in seen:
            raise MgpoError(f"adapter folder {spec}: its base_model_name_or_path loops")
        seen.add(spec)
        spec = adapter_base(spec)
    return spec


def import_peft() -> Any:
    """The ``peft`` module, or one line saying how to install it."""
    try:
        import peft
    except ImportError as error:
        raise MgpoError(f"LoRA needs peft: pip install 'mgpo[lora]' ({error})") from None
    return peft


def merge_adapter(model: Any, folder: str | Path) -> Any:
    """``model`` (the adapter's base, float32) with the adapter of ``folder`` merged in."""
    peft = import_peft()
    try:
        adapted = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as error:  # noqa: BLE001 - any failure is the adapter folder's
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MgpoError(
            f"adapter folder {folder}: cannot apply it to its base ({reason})"
        ) from None
    return adapted.merge_and_unload()
