"""Where a training step's time goes: rollout / score / old log-probs / update, and trainer tokens/s.

Prepares the built-in ``shapes`` train split in a temporary folder, runs
``mgpo train --recipe tiny --algo grpo`` for ``--steps`` steps per setting (no validation, no
checkpoint until the end), and reads the run's ``metrics.jsonl``. ``--recipe smollm2_arithmetic
--model DIR`` runs SmolLM2-135M on the built-in ``arithmetic`` task instead (the recipe's own
algorithm unless ``--algo`` says otherwise). Step 1 (warm-up: first
forward passes, score worker start) is left out; the table shows median seconds per phase, each
phase's share of the median step time, and what is left over (step time minus the four phases:
data order, reading shards back, advantages, metrics).

    OMP_NUM_THREADS=1 python benchmarks/train_step.py
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --steps 8 \\
        --settings n=16,max_new_tokens=1 --settings n=8,max_new_tokens=32
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --recipe smollm2_arithmetic \\
        --model models/smollm2-135m-instruct --steps 4 --settings n=8

A setting is comma-separated ``key=value``: ``n``, ``max_new_tokens``, ``prompts`` (rollout
batch) or any recipe key (``optim.micro_batch=64``). ``trainer_tokens_per_s`` counts response
tokens over old-log-prob + update time, as the trainer logs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("rollout_s", "score_s", "logprobs_s", "update_s")
ALIASES = {
    "n": "rollout.n",
    "max_new_tokens": "rollout.max_new_tokens",
    "prompts": "rollout.batch_prompts",
}
# No validation, no checkpoints inside the timed steps (the final save comes after the last one).
QUIET = {"trainer.val_every": "0", "trainer.save_every": "0", "data.val": "null"}
DEFAULT_SETTINGS = ("n=16,max_new_tokens=1", "n=16,max_new_tokens=16")
DATASETS = {"tiny": "shapes", "smollm2_arithmetic": "arithmetic"}  # each recipe's training task


def child_env() -> dict[str, str]:
    """One compute thread (the machine is shared), the repo importable, no colour codes."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NO_COLOR"] = "1"
    env["TERM"] = "dumb"
    return env


def mgpo(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mgpo_cli", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise SystemExit(f"mgpo {' '.join(args[:2])} failed (exit {result.returncode}):\n{tail}")
    return result


def prepare_data(folder: Path, split: str = "train", dataset: str = "shapes") -> Path:
    """``mgpo prepare DATASET --split SPLIT`` into ``FOLDER/SPLIT`` (the prompt shards)."""
    out = folder / split
    mgpo("prepare", dataset, "--split", split, "--out", str(out))
    return out


def parse_setting(text: str) -> dict[str, str]:
    """``n=16,max_new_tokens=1`` -> recipe overrides ``{"rollout.n": "16", ...}``."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--settings {text!r}: expected key=value pairs, got {part!r}")
        out[ALIASES.get(key, key)] = value
    return out


def run_ours(
    data: Path,
    run_dir: Path,
    steps: int,
    overrides: dict[str, str],
    algo: str | None = "grpo",
    recipe: str = "tiny",
) -> tuple[list[dict], float]:
    """Train ``steps`` steps with ``recipe``; the metrics rows and the command's wall time."""
    sets = [f"{k}={v}" for k, v in {**QUIET, **overrides}.items()]
    args = ["train", "--recipe", recipe, "--data", str(data)]
    args += ["--algo", algo] if algo else []
    args += ["--run-dir", str(run_dir), "--steps", str(steps), "--overwrite"]
    for item in sets:
        args += ["--set", item]
    started = time.perf_counter()
    mgpo(*args)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "step_time_s" in r], wall


def breakdown(rows: list[dict], skip: int = 1) -> dict[str, float]:
    """Medians over the steps after the first ``skip`` (warm-up) ones."""
    timed = rows[skip:] or rows
    out = {k: statistics.median(r[k] for r in timed) for k in (*PHASES, "step_time_s")}
    out["other_s"] = statistics.median(r["step_time_s"] - sum(r[k] for k in PHASES) for r in timed)
    out["trainer_tokens_per_s"] = statistics.median(r["trainer_tokens_per_s"] for r in timed)
    out["samples"] = statistics.median(r["samples_trained"] for r in timed)
    out["response_tokens"] = statistics.median(
        r["samples_trained"] * r["response_length_mean"] for r in timed
    )
    out["warmup_step_s"] = rows[0]["step_time_s"]
    out["steps_timed"] = len(timed)
    return out


def print_breakdown(title: str, b: dict[str, float]) -> None:
    step = b["step_time_s"]
    print(f"\n{title}")
    print(
        f"  {b['samples']:.0f} samples/step, {b['response_tokens']:.0f} response tokens/step, "
        f"median of {b['steps_timed']} steps (step 1 = warm-up, {b['warmup_step_s']:.2f} s, left out)"
    )
    print(f"  {'phase':<12} {'median s':>9} {'share':>7}")
    for key in (*PHASES, "other_s"):
        print(f"  {key[:-2]:<12} {b[key]:>9.3f} {b[key] / step:>7.1%}")
    print(f"  {'step':<12} {step:>9.3f} {1:>7.1%}")
    print(f"  trainer tokens/s (log-probs + update): {b['trainer_tokens_per_s']:.0f}")
    print(f"  samples/s (whole step): {b['samples'] / step:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per setting")
    parser.add_argument("--algo", help="default: grpo with the tiny recipe, else the recipe's")
    parser.add_argument("--recipe", default="tiny", choices=sorted(DATASETS))
    parser.add_argument("--model", help="model.name (e.g. the SmolLM2 folder)")
    parser.add_argument(
        "--settings",
        action="append",
        help="key=value,... overrides (repeatable); default: " + " and ".join(DEFAULT_SETTINGS),
    )
    parser.add_argument("--keep", type=Path, help="keep data and runs here instead of a temp dir")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (step 1 is warm-up)")
    settings = args.settings or list(DEFAULT_SETTINGS)
    with tempfile.TemporaryDirectory(prefix="mgpo-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        data = prepare_data(folder, dataset=DATASETS[args.recipe])
        algo = args.algo or ("grpo" if args.recipe == "tiny" else None)
        print(
            f"mgpo train --recipe {args.recipe} --algo {algo or '(recipe)'}, {args.steps} steps "
            f"per setting, OMP_NUM_THREADS={child_env()['OMP_NUM_THREADS']}"
        )
        for k, text in enumerate(settings):
            overrides = parse_setting(text)
            if args.model:
                overrides["model.name"] = args.model
            run = folder / f"run-{k}"
            rows, wall = run_ours(data, run, args.steps, overrides, algo, args.recipe)
            print_breakdown(f"setting {text}  (command wall time {wall:.1f} s)", breakdown(rows))


if __name__ == "__main__":
    main()
