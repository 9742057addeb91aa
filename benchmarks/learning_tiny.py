"""Does each algorithm learn? Every registered loss (and mgpo with alpha dyn) on the built-in task.

From the same tiny model and data (``mgpo prepare shapes --difficulty colour``: 512 train, 64
validation drawings), train each algorithm with the tiny recipe's budget for each seed
(``--seeds 0 1 2``: ``trainer.seed``) and report held-out greedy accuracy before (step 0), during
and after, with wall-clock minutes; then the accuracy at steps 75 / 100 / 150 per algorithm (each
seed, and the mean). Chance level is printed from the validation set itself (the share of its
most common answer, which is the best an image-blind policy can do). Each run's result is
appended to ``WORK/results.jsonl`` as it finishes, so a partial run still reports.

    python benchmarks/learning_tiny.py                      # 150 steps, 2 runs at a time
    python benchmarks/learning_tiny.py --difficulty easy --steps 300
    python benchmarks/learning_tiny.py --set rollout.max_new_tokens=2 --seeds 0 1 2
    python benchmarks/learning_tiny.py --only grpo --only "mgpo a=0.5"

With one-token answers (the tiny recipe) and one on-policy update per step, the losses mostly
give the same update (token and sequence ratios coincide and MGPO selects floor(0.5 * 1) = 0
tokens), so their curves coincide. ``--set rollout.max_new_tokens=2`` makes them differ: the
answer is still the first word, the second token only adds noise, and MGPO moves weight towards
the more uncertain of the two tokens. The tiny recipe clips at 0.2 / 0.2 (MGPO's setting); DAPO,
CISPO and GMPO run with their own clip defaults, GSPO with 0.2 / 0.2.
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

OWN_CLIP = ["--set", "algo.eps_low=null", "--set", "algo.eps_high=null"]
ALGORITHMS = {
    "grpo": ["--algo", "grpo"],
    "gspo": ["--algo", "gspo", "--set", "algo.eps_low=0.2", "--set", "algo.eps_high=0.2"],
    "mgpo a=0.5": ["--algo", "mgpo", "--alpha", "0.5", "--beta", "0.5"],
    "mgpo a=dyn": ["--algo", "mgpo", "--alpha", "dyn", "--beta", "0.5"],
    "dapo": ["--algo", "dapo", *OWN_CLIP],
    "dr_grpo": ["--algo", "dr_grpo"],
    "gpg": ["--algo", "gpg"],
    "sapo": ["--algo", "sapo"],
    "cispo": ["--algo", "cispo", *OWN_CLIP],
    "gmpo": ["--algo", "gmpo", *OWN_CLIP],
}
REPORT_STEPS = (75, 100, 150)


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="trainer.seed values")
    parser.add_argument("--only", action="append", default=[], help="run only these algorithms")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mgpo-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prepare_data(work, args, env)
    common = ["train", "--recipe", "tiny", "--steps", str(args.steps)]
    common += ["--set", f"trainer.val_every={max(args.steps // 6, 1)}"]
    common += ["--set", "trainer.save_every=0"]
    for extra in args.set:
        common += ["--set", extra]
    names = [n for n in ALGORITHMS if not args.only or n in args.only]
    print(
        f"shapes ({args.difficulty}, {args.image_size} px), {args.steps} steps, tiny recipe "
        f"{' '.join(args.set)}, seeds {args.seeds}; work dir {work}\n"
        "chance level on the validation set (most common answer per question kind): "
        f"{chance_level(work / 'data/shapes/validation'):.3f}\n"
        "| algorithm | seed | val acc step 0 | val acc during | val acc final | minutes |\n"
        "|---|---|---|---|---|---|",
        flush=True,
    )
    results = run_all(work, common, names, args.seeds, args.parallel, env)
    print_summary(names, args.seeds, results)


def run_all(
    work: Path, common: list[str], names: list[str], seeds: list[int], parallel: int, env: dict
) -> dict[tuple[str, int], dict]:
    """Every (algorithm, seed) run, ``parallel`` at a time; each reported as it finishes."""
    pending = [(name, seed) for seed in seeds for name in names]
    running: list[tuple[str, int, subprocess.Popen, float]] = []
    results: dict[tuple[str, int], dict] = {}
    while pending or running:
        while pending and len(running) < parallel:
            name, seed = pending.pop(0)
            run_dir = work / "runs" / f"{slug(name)}-seed{seed}"
            flags = [*ALGORITHMS[name], "--seed", str(seed), "--run-dir", str(run_dir)]
            log = open(work / f"{run_dir.name}.log", "w")  # noqa: SIM115 - open while the run lives
            process = subprocess.Popen(
                mgpo(*common, *flags, "--overwrite"),
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            running.append((name, seed, process, time.time()))
        time.sleep(2)
        for entry in list(running):
            name, seed, process, started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            run_dir = work / "runs" / f"{slug(name)}-seed{seed}"
            result = read_run(run_dir, (time.time() - started) / 60, process.returncode)
            results[(name, seed)] = result
            with open(work / "results.jsonl", "a") as out:
                out.write(json.dumps({"algorithm": name, "seed": seed, **result}) + "\n")
            print(row(name, seed, result), flush=True)
    return results


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")


def prepare_data(work: Path, args: argparse.Namespace, env: dict) -> None:
    for split, size in (("train", 512), ("validation", args.val_size)):
        command = ["prepare", "shapes", "--difficulty", args.difficulty]
        command += ["--image-size", str(args.image_size), "--split", split]
        command += ["--size", str(size), "--overwrite"]
        subprocess.run(mgpo(*command), cwd=work, env=env, check=True, capture_output=True)


def read_run(run_dir: Path, minutes: float, returncode: int) -> dict:
    """Validation accuracy by step (and whether the run finished) from ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    val = {r["step"]: r["val_accuracy"] for r in rows if "val_accuracy" in r}
    return {"val": val, "minutes": minutes, "ok": returncode == 0}


def row(name: str, seed: int, result: dict) -> str:
    val = sorted(result["val"].items())
    if not result["ok"] or not val:
        return f"| {name} | {seed} | failed (see its log) | | | {result['minutes']:.1f} |"
    during = ", ".join(f"{v:.2f}@{s}" for s, v in val[1:-1])
    return (
        f"| {name} | {seed} | {val[0][1]:.3f} | {during} | {val[-1][1]:.3f} | "
        f"{result['minutes']:.1f} |"
    )


def print_summary(names: list[str], seeds: list[int], results: dict) -> None:
    """Validation accuracy at the report steps: each seed, then the mean over the seeds that got
    there (``-``: not reached or failed)."""
    header = " | ".join(f"step {s}" for s in REPORT_STEPS)
    print(f"\n| algorithm (seeds {', '.join(map(str, seeds))}; mean) | {header} |")
    print("|---|" + "---|" * len(REPORT_STEPS))
    for name in names:
        cells = []
        for step in REPORT_STEPS:
            values = [
                results[(name, s)]["val"].get(step) if (name, s) in results else None for s in seeds
            ]
            got = [v for v in values if v is not None]
            shown = ", ".join("-" if v is None else f"{v:.2f}" for v in values)
            mean = f"{sum(got) / len(got):.2f}" if got else "-"
            cells.append(f"{shown}; {mean}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
