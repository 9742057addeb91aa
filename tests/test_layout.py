"""The folder layout is the architecture: ``mgpo_cli`` (the command line) -> a stage -> the base.

These tests hold the layout to what README "Architecture" says: the library never reaches up
into the command line, a stage uses another stage only through what that stage's package exports,
no two modules import each other (directly or round a loop, lazy imports included), no source
file grows past ~450 lines, and pyproject lists every package.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mgpo_cli", "stages")
STAGES = ("prepare", "rollout", "score", "train", "eval", "report")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Every module of the two packages by dotted name (a package is its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of ours that ``name`` imports anywhere in its body (lazy imports too).

    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module, else as
    importing ``pkg`` (its ``__init__``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_the_command_line():
    upward = {
        name: sorted(m for m in deps if m.split(".")[0] == "mgpo_cli")
        for name, deps in GRAPH.items()
        if name.split(".")[0] == "stages"
    }
    assert {k: v for k, v in upward.items() if v} == {}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "stages" and parts[1] in STAGES else None


def test_stages_use_each_other_only_through_their_packages():
    """``from stages.rollout import run_rollout`` is fine; ``stages.rollout.engine_hf`` is not."""
    reaching_in = []
    for name, deps in GRAPH.items():
        mine = _stage(name)
        for dep in deps:
            theirs = _stage(dep)
            if theirs and theirs != mine and dep != f"stages.{theirs}":
                reaching_in.append(f"{name} -> {dep}")
    assert reaching_in == []


def test_the_base_imports_no_stage():
    """The base (everything under ``stages`` outside the stage packages) stands on its own."""
    base = [n for n in GRAPH if n.split(".")[0] == "stages" and _stage(n) is None]
    assert base
    assert {
        n: sorted(d for d in GRAPH[n] if _stage(d)) for n in base if any(map(_stage, GRAPH[n]))
    } == {}


def test_every_stages_module_imports_without_the_command_line():
    """Run in a fresh interpreter: importing all of ``stages`` leaves ``mgpo_cli`` unloaded."""
    names = [n for n in MODULES if n.split(".")[0] == "stages"]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'mgpo_cli')\n"
        "print(len(sys.modules), loaded)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_source_files_stay_readable(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)}: {lines} lines"


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    assert folders | {"mgpo_recipes"} == listed
    assert config["package-dir"] == {"mgpo_recipes": "recipes"}


def test_recipes_are_found_in_the_top_level_folder():
    config = importlib.import_module("stages.config")
    assert config.recipes_folder().resolve() == (ROOT / "recipes").resolve()
    assert {"tiny", "qwen2_5_vl_3b", "qwen2_5_vl_7b"} <= set(config.builtin_recipes())
