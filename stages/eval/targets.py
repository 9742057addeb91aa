"""The models ``mgpo eval`` compares: what each ``--model`` loads, its folder name, its identity.

``--model`` takes what ``mgpo rollout`` takes (``tiny``, a model folder, a hub id) plus the
folders ``mgpo train`` writes: a run directory means its exported policy ``RUN/final`` (a run
killed before it finished: its newest checkpoint), and a checkpoint
``RUN/checkpoints/step-000010`` loads as it is (a LoRA run's may be peft adapter folders: their
base with the adapter merged in). A run directory is told from a model folder by
its ``config.json``, which holds the training recipe rather than a model's ``model_type``. Each model gets a filesystem-safe tag,
the folder its results go under and its row label in the results table:

    tiny                          -> tiny
    Qwen/Qwen2.5-VL-3B-Instruct   -> Qwen--Qwen2.5-VL-3B-Instruct
    runs/tiny (or runs/tiny/final) -> tiny-final
    runs/tiny/checkpoints/step-000010 -> tiny-step-000010
    /models/my-policy             -> my-policy

Every model is checked (folder, ``config.json``, supported architecture) before anything is
written or any weights load, so a typo in the second ``--model`` costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stages.errors import MgpoError

CHECKPOINT = re.compile(r"^step-\d+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Files whose size and modification time identify a folder's weights (a retrained run changes them).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


@dataclass(frozen=True)
class EvalModel:
    spec: str  # as the user gave it
    load: str  # what the engine loads: a built-in name, a folder (absolute) or a hub id
    tag: str  # folder name under --out, and the results table's row label
    fingerprint: str  # changes when the weights do, so stale results are never reused


def is_run_dir(path: Path) -> bool:
    """A folder ``mgpo train`` wrote: it has ``final/`` or ``checkpoints/``, and its
    ``config.json``, if readable, is a training recipe (``trainer``...) and not a model config."""
    if not ((path / "final").is_dir() or (path / "checkpoints").is_dir()):
        return _is_training_config(path / "config.json")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # missing or damaged: the policy folders inside are what counts
    return _is_training_config(path / "config.json", config)


def _is_training_config(file: Path, config: object = None) -> bool:
    if config is None:
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
    return isinstance(config, dict) and "trainer" in config and "model_type" not in config


def locate(spec: str) -> str:
    """The model a spec means: a run directory's ``final`` policy (else its newest checkpoint),
    otherwise the spec itself."""
    from stages.console import console
    from stages.models.adapters import ADAPTER_CONFIG
    from stages.models.loading import BUILTIN

    def is_policy(folder: Path) -> bool:  # a model folder, or a LoRA run's adapter folder
        return (folder / "config.json").is_file() or (folder / ADAPTER_CONFIG).is_file()

    if spec in BUILTIN:
        return spec
    path = Path(spec).expanduser()
    if path.is_dir() and is_run_dir(path):
        if is_policy(path / "final"):
            return str((path / "final").resolve())
        steps = sorted(p for p in (path / "checkpoints").glob("step-*") if CHECKPOINT.match(p.name))
        steps = [p for p in steps if is_policy(p)]
        if not steps:
            raise MgpoError(
                f"--model {spec}: the training run has no policy yet (no final/ and no checkpoint:"
                " it was stopped before its first checkpoint)"
            )
        console.print(f"{spec}: the run has no final policy; evaluating its newest checkpoint")
        return str(steps[-1].resolve())
    return str(path.resolve()) if path.exists() else spec


def tag_of(load: str) -> str:
    """A filesystem-safe name for a located model (see the module docstring)."""
    path = Path(load)
    if path.is_absolute() and path.exists():
        if path.name == "final":
            raw = f"{path.parent.name}-final"
        elif CHECKPOINT.match(path.name) and path.parent.name == "checkpoints":
            raw = f"{path.parent.parent.name}-{path.name}"
        else:
            raw = path.name
    else:
        raw = load.replace("/", "--")
    return _UNSAFE.sub("-", raw).strip("-.") or "model"


def fingerprint(load: str) -> str:
    """Built-ins and hub ids by name (with the built tiny model's version); folders by their
    weight and config files' sizes and modification times (cheap, unlike hashing weights)."""
    from stages.models.loading import BUILTIN, resolve_model

    if load in BUILTIN:
        return f"{load}:{Path(resolve_model(load)).name}"
    path = Path(load)
    if not path.is_dir():
        return load
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file() and file.name.endswith(_WEIGHT_SUFFIXES):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def check_loadable(spec: str, load: str) -> None:
    """Fail now, with one line, if the model cannot be loaded (missing folder, unreadable or
    unsupported config); weights are only read later, when the model's turn comes."""
    from transformers import AutoConfig

    from stages.models.loading import config_path, model_kind
    from stages.models.quiet import quiet_transformers

    path = config_path(load)  # an adapter folder: its base's config
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - any config failure is the user's model spec
        lines = str(error).strip().splitlines()
        raise MgpoError(
            f"cannot load model '{spec}': {lines[0] if lines else type(error).__name__}"
        ) from None
    model_kind(config, spec)


def resolve_models(specs: list[str] | tuple[str, ...]) -> list[EvalModel]:
    """Check and name every ``--model``; the same model given twice counts once.

    Two different models with the same tag (``a/policy`` and ``b/policy``) get a short hash of
    where they load from appended, so their results never share a folder.
    """
    if not specs:
        raise MgpoError("missing --model (a hub id, a model folder, a run directory or 'tiny')")
    located: dict[str, str] = {}
    for spec in specs:
        load = locate(spec)
        if load not in located.values():
            check_loadable(spec, load)
            located[spec] = load
    tags = {spec: tag_of(load) for spec, load in located.items()}
    counts = Counter(tags.values())
    models = []
    for spec, load in located.items():
        tag = tags[spec]
        if counts[tag] > 1:
            tag = f"{tag}-{hashlib.sha256(load.encode()).hexdigest()[:6]}"
        models.append(EvalModel(spec, load, tag, fingerprint(load)))
    return models
