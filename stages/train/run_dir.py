"""The run directory: refuse to touch an existing run unless told how, and start a new one.

A run directory holds ``config.json`` (the resolved recipe, written first), ``metrics.jsonl``,
``steps/`` (each step's shard sets), ``checkpoints/`` and ``final/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from stages.config import to_dict
from stages.errors import MgpoError
from stages.outputs import check_writable
from stages.train.config import TrainConfig

# Settings a resumed run may change: the step budget, the logging / checkpoint cadence, the export.
RESUMABLE_CHANGES = ("steps", "val_every", "save_every", "keep_last", "wandb", "export")


def check_run_dir(config: TrainConfig, *, resume: bool, overwrite: bool) -> Path:
    """Refuse to touch an existing run unless told how (read-only: safe on every process)."""
    run_dir = Path(config.run_dir)
    check_writable(run_dir, "--run-dir")
    saved = run_dir / "config.json"
    if saved.is_file():
        if not overwrite and not resume:
            raise MgpoError(
                f"{run_dir}: a run already exists here (pass --resume to continue it or --overwrite to replace it)"
            )
        previous = {} if overwrite else _read_config(saved)
        if resume and not overwrite and _comparable(previous) != _comparable(to_dict(config)):
            raise MgpoError(
                f"{run_dir}: --resume with a different config than the run was started with ({_first_difference(previous, to_dict(config))})"
            )
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise MgpoError(
            f"{run_dir}: exists, is not empty and is not an mgpo run (pass --overwrite)"
        )
    return run_dir


def _read_config(saved: Path) -> dict[str, Any]:
    """The config a run was started with; one line if the file is damaged."""
    try:
        previous = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MgpoError(
            f"{saved}: damaged ({reason}); the run cannot be resumed (pass --overwrite to start again)"
        ) from None
    if not isinstance(previous, dict):
        raise MgpoError(f"{saved}: damaged (not a JSON object); pass --overwrite to start again")
    return previous


def write_run_dir(config: TrainConfig, *, overwrite: bool) -> None:
    """Start the run directory (main process only): replace it if asked, save the config."""
    run_dir = Path(config.run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.json"
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_dict(config), indent=2, default=str))
    tmp.replace(saved)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """What must match for a resume: everything but ``RESUMABLE_CHANGES``."""
    out = json.loads(json.dumps(config, default=str))
    for key in RESUMABLE_CHANGES:
        out.get("trainer", {}).pop(key, None)
    out.pop("plan", None)  # the memory plan's target node and check change nothing trained
    return out


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    a, b = _comparable(a) if not prefix else a, _comparable(b) if not prefix else b
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            found = _first_difference(a[key], b[key], f"{prefix}{key}.")
            if found:
                return found
        elif a.get(key) != b.get(key):
            return f"{prefix}{key}: {a.get(key)!r} then, {b.get(key)!r} now"
    return ""
