"""Session fixtures shared by the model, engine and end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model (seed 0), built once per session into a private cache.

    ``MGPO_CACHE`` points at that cache for the session, so ``--model tiny`` (in-process or in
    a CLI subprocess) finds this build instead of writing to ``~/.cache``.
    """
    from stages.models.tiny import tiny_model_path

    root = tmp_path_factory.mktemp("mgpo-cache")
    os.environ["MGPO_CACHE"] = str(root)
    return tiny_model_path(seed=0, root=root)


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir: Path):
    """``(model, io)`` of the tiny model, loaded once; tests must not change its weights."""
    from stages.models.loading import load_policy

    return load_policy(str(tiny_model_dir), dtype="float32")
