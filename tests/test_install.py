"""An installed mgpo works outside the repository: recipes and prompt templates ship with it.

Both ways of installing are tried in fresh virtual environments (``--system-site-packages`` so
torch and transformers need not be installed again, ``--without-pip`` so the outer pip and
setuptools do the install; ``--no-deps`` and no index, so nothing is fetched), and ``mgpo`` is run
from a directory that is not the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _venv(path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
        check=True,
        capture_output=True,
    )
    return path / "bin"


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH: the venv's own installation must answer."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _pip(bin_dir: Path, *args: str, cwd: Path) -> None:
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**_clean_env(), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _mgpo(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "mgpo"), *args], cwd=cwd, capture_output=True, text=True, env=_clean_env()
    )


def _where(bin_dir: Path, module: str, cwd: Path) -> Path:
    code = f"import importlib.resources as r, {module} as m; print(r.files(m))"
    out = subprocess.run(
        [str(bin_dir / "python"), "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
    )
    return Path(out.stdout.strip())


def _check_commands(bin_dir: Path, elsewhere: Path) -> None:
    shown = _mgpo(bin_dir, "train", "--recipe", "tiny", "--show-config", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert '"name": "tiny"' in shown.stdout
    listed = _mgpo(bin_dir, "prepare", "--list", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert "geometry3k" in listed.stdout and "shapes" in listed.stdout


def test_wheel_install_runs_from_anywhere(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels), str(ROOT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("mgpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mgpo_recipes/tiny.yaml" in names and "mgpo_recipes/qwen2_5_vl_3b.yaml" in names
    assert "stages/prompt_templates/math_think_boxed.jinja" in names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)

    bin_dir = _venv(tmp_path / "venv")
    _pip(bin_dir, str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the venv's own copy answers, not the checkout
    assert (tmp_path / "venv") in _where(bin_dir, "mgpo_recipes", elsewhere).parents
    assert (tmp_path / "venv") in _where(bin_dir, "stages", elsewhere).parents
    _check_commands(bin_dir, elsewhere)


def test_editable_install_maps_recipes_onto_the_folder(tmp_path: Path) -> None:
    source = tmp_path / "checkout"  # a copy: an editable install writes build files beside it
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("mgpo_cli", "stages", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    bin_dir = _venv(tmp_path / "venv")
    _pip(bin_dir, "--no-build-isolation", "-e", str(source), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _where(bin_dir, "mgpo_recipes", elsewhere) == source / "recipes"
    _check_commands(bin_dir, elsewhere)
