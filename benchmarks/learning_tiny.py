"""Does each algorithm learn? grpo, gspo, mgpo (alpha 0.5) and mgpo (dyn) on the built-in task.

From the same tiny model and data (``mgpo prepare shapes --difficulty colour``: 512 train, 64
validation drawings), train each algorithm with the tiny recipe's budget and report held-out
greedy accuracy before (step 0), during and after, with wall-clock minutes. Chance level is
printed from the validation set itself (the share of its most common answer, which is the best
an image-blind policy can do).

    python benchmarks/learning_tiny.py                      # 150 steps, 2 runs at a time
    python benchmarks/learning_tiny.py --difficulty easy --steps 300
    python benchmarks/learning_tiny.py --set rollout.max_new_tokens=2

With one-token answers (the tiny recipe) and one on-policy update per step, the four losses give
the same update (token and sequence ratios coincide and MGPO selects floor(0.5 * 1) = 0 tokens),
so their curves coincide. ``--set rollout.max_new_tokens=2`` makes them differ: the answer is
still the first word, the second token only adds noise, and MGPO moves weight towards the more
uncertain of the two tokens.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGORITHMS = {
    "grpo": ["--algo", "grpo"],
    "gspo": ["--algo", "gspo", "--set", "algo.eps_low=0.2", "--set", "algo.eps_high=0.2"],
    "mgpo a=0.5": ["--algo", "mgpo", "--alpha", "0.5", "--beta", "0.5"],
    "mgpo a=dyn": ["--algo", "mgpo", "--alpha", "dyn", "--beta", "0.5"],
}


def mgpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "mgpo_cli", *args]


def chance_level(validation: Path) -> float:
    """Accuracy of always giving the most common answer of each question kind (image-blind best)."""
    from stages.shards import open_shards

    answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total = 0
    for row in open_shards(validation, "prompts").iter_rows(columns=["answer", "meta"]):
        answers[json.loads(row["meta"]).get("task", "?")][row["answer"]] += 1
        total += 1
    return sum(c.most_common(1)[0][1] for c in answers.values()) / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument(
        "--difficulty", default="colour", help="shapes level: colour, easy, medium or hard"
    )
    parser.add_argument("--image-size", type=int, default=112, help="shapes image side (pixels)")
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument(
        "--parallel", type=int, default=2, help="runs at a time (1 CPU thread each)"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="extra recipe overrides for every run"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="working folder (default: a temp dir)"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mgpo-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for split, size in (("train", 512), ("validation", args.val_size)):
        subprocess.run(
            mgpo(
                "prepare",
                "shapes",
                "--difficulty",
                args.difficulty,
                "--image-size",
                str(args.image_size),
                "--split",
                split,
                "--size",
                str(size),
                "--overwrite",
            ),
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
    common = [
        "train",
        "--recipe",
        "tiny",
        "--steps",
        str(args.steps),
        "--set",
        f"trainer.val_every={max(args.steps // 6, 1)}",
        "--set",
        "trainer.save_every=0",
    ]
    for extra in args.set:
        common += ["--set", extra]
    pending = list(ALGORITHMS.items())
    running: list[tuple[str, subprocess.Popen, float]] = []
    finished: dict[str, float] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name, flags = pending.pop(0)
            run_dir = work / "runs" / name.replace(" ", "_").replace("=", "")
            command = mgpo(*common, *flags, "--run-dir", str(run_dir), "--overwrite")
            log = open(work / f"{run_dir.name}.log", "w")  # noqa: SIM115 - open while the run lives
            running.append(
                (
                    name,
                    subprocess.Popen(
                        command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
                    ),
                    time.time(),
                )
            )
        time.sleep(2)
        for entry in list(running):
            name, process, started = entry
            if process.poll() is not None:
                if process.returncode != 0:
                    sys.exit(f"{name} failed; see {work}")
                finished[name] = (time.time() - started) / 60
                running.remove(entry)
    print(
        f"shapes ({args.difficulty}, {args.image_size} px), {args.steps} steps, tiny recipe {' '.join(args.set)}; work dir {work}"
    )
    print(
        f"chance level on the validation set (most common answer per question kind): {chance_level(work / 'data/shapes/validation'):.3f}"
    )
    print(
        "| algorithm | val acc step 0 | val acc during | val acc final | train acc last 10 steps | minutes |"
    )
    print("|---|---|---|---|---|---|")
    for name in ALGORITHMS:
        run_dir = work / "runs" / name.replace(" ", "_").replace("=", "")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        val = [(r["step"], r["val_accuracy"]) for r in rows if "val_accuracy" in r]
        train = [r["accuracy"] for r in rows if "accuracy" in r][-10:]
        during = ", ".join(f"{v:.2f}@{s}" for s, v in val[1:-1])
        print(
            f"| {name} | {val[0][1]:.3f} | {during} | {val[-1][1]:.3f} | {sum(train) / max(len(train), 1):.3f} | {finished[name]:.1f} |"
        )


if __name__ == "__main__":
    main()
