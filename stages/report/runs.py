"""Run directories read into one tidy structure: label, config, metric rows, eval summaries.

A run directory is what ``mgpo train`` writes (``config.json``, ``metrics.jsonl``, ``steps/``,
``checkpoints/``, ``final/``) plus any ``mgpo eval`` output a user put inside it
(``RUN/eval/TAG/BENCH/summary.json``). Reading never fails on one bad line or file: what cannot
be read is named in ``problems`` and skipped, so one broken run does not stop a report.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.errors import MgpoError

# Folders of a run that hold shards, weights or logs, never eval summaries (not searched).
SKIP_DIRS = frozenset({"steps", "checkpoints", "final", "tensorboard", "wandb"})
# Per-row token count for the "tokens" x-axis: trained samples x their mean response length.
TOKEN_KEYS = ("samples_trained", "response_length_mean")


@dataclass
class Run:
    """One readable run: metric rows sorted by step (last line wins for a repeated step)."""

    path: Path
    label: str
    config: dict[str, Any]
    rows: list[dict[str, float]]
    summaries: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def last_step(self) -> int:
        return int(self.rows[-1]["step"]) if self.rows else 0


def _number(value: Any) -> str:
    """``0.5`` not ``0.50000``; ``dyn`` stays ``dyn``."""
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def label_of(config: dict[str, Any], fallback: str) -> str:
    """Algorithm and the settings that tell its runs apart, e.g. ``mgpo α=dyn β=0.5``."""
    algo = config.get("algo")
    if not isinstance(algo, dict) or not algo.get("name"):
        return fallback
    name = str(algo["name"])
    parts = [name]
    if name == "mgpo":
        parts += [f"α={_number(algo.get('alpha'))}", f"β={_number(algo.get('beta'))}"]
    if name == "gpg" and algo.get("gpg_threshold"):
        parts.append(f"β_th={_number(algo['gpg_threshold'])}")
    if algo.get("kl_coef"):
        parts.append(f"kl={_number(algo['kl_coef'])}")
    return " ".join(parts)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def read_metrics(path: Path) -> tuple[list[dict[str, float]], list[str]]:
    """Rows of ``metrics.jsonl`` by step; unreadable lines and non-numeric values are named."""
    problems: list[str] = []
    by_step: dict[int, dict[str, float]] = {}
    dropped: dict[str, int] = {}
    repeated = 0
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MgpoError(f"{path}: cannot read ({error})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{path} line {number}: not JSON, skipped")
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int | float) or step != int(step):
            problems.append(f"{path} line {number}: no integer 'step', skipped")
            continue
        row: dict[str, float] = {}
        for key, value in record.items():
            number_value = _as_float(value)
            if number_value is None:
                dropped[key] = dropped.get(key, 0) + 1
            else:
                row[key] = number_value
        if "ratio_spread" not in row and "ratio_max" in row and "ratio_min" in row:
            row["ratio_spread"] = row["ratio_max"] - row["ratio_min"]
        repeated += int(step) in by_step
        by_step[int(step)] = row
    for key, count in dropped.items():
        problems.append(f"{path}: '{key}' is not a number on {count} line(s), skipped")
    if repeated:
        problems.append(f"{path}: {repeated} step(s) logged twice, the later line kept")
    return [by_step[s] for s in sorted(by_step)], problems


def tokens_axis(rows: list[dict[str, float]]) -> list[float] | None:
    """Cumulative response tokens trained up to each row; None when a training row lacks them."""
    total, out = 0.0, []
    for row in rows:
        present = [key in row for key in TOKEN_KEYS]
        if any(present) and not all(present):
            return None
        if all(present):
            total += row["samples_trained"] * row["response_length_mean"]
        out.append(total)
    return out if any(all(key in row for key in TOKEN_KEYS) for row in rows) else None


def _summary_files(run_dir: Path) -> list[Path]:
    """Every ``summary.json`` under the run, not descending into shard/weight folders."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        top = Path(root) == run_dir
        dirs[:] = sorted(d for d in dirs if not (top and d in SKIP_DIRS) and not d.startswith("."))
        if "summary.json" in files:
            found.append(Path(root) / "summary.json")
    return found


def read_summaries(run_dir: Path) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str]]:
    """``{model_tag: {bench: summary}}`` of the eval summaries inside the run."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    problems: list[str] = []
    for path in _summary_files(run_dir):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            problems.append(f"{path}: not a readable JSON file, skipped")
            continue
        if not isinstance(summary, dict) or not isinstance(summary.get("headline"), dict):
            problems.append(f"{path}: not an mgpo eval summary (no 'headline'), skipped")
            continue
        bench = str(summary.get("bench") or path.parent.name)
        tag = str(summary.get("model") or path.parent.parent.name)
        if bench in out.get(tag, {}):
            problems.append(f"{path}: a second {tag}/{bench} summary in this run, skipped")
            continue
        out.setdefault(tag, {})[bench] = summary
    return out, problems


def read_run(path: str | os.PathLike) -> Run:
    """One run directory; MgpoError when it has no usable metric row."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise MgpoError(f"{run_dir}: not a directory")
    problems: list[str] = []
    config: dict[str, Any] = {}
    config_path = run_dir / "config.json"
    try:
        loaded = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            config = loaded
        else:
            problems.append(f"{config_path}: not a JSON object (labelled by folder name)")
    except FileNotFoundError:
        problems.append(f"{config_path}: missing (labelled by folder name)")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        problems.append(f"{config_path}: not readable JSON (labelled by folder name)")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise MgpoError(f"{metrics_path}: missing")
    rows, metric_problems = read_metrics(metrics_path)
    problems += metric_problems
    if not rows:
        raise MgpoError(f"{metrics_path}: no readable metric line")
    summaries, summary_problems = read_summaries(run_dir)
    problems += summary_problems
    label = label_of(config, run_dir.name)
    return Run(run_dir, label, config, rows, summaries, problems)


def read_runs(paths: list[str | os.PathLike]) -> tuple[list[Run], list[str]]:
    """The usable runs (labels made unique) and every problem met, in input order."""
    runs: list[Run] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            problems.append(f"{path}: given twice, read once")
            continue
        seen.add(resolved)
        try:
            run = read_run(path)
        except MgpoError as error:
            problems.append(f"{error} (run skipped)")
            continue
        problems += run.problems
        runs.append(run)
    for suffix in (lambda run: run.path.name, lambda run: str(run.path)):
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.label] = counts.get(run.label, 0) + 1
        for run in runs:
            if counts[run.label] > 1:
                run.label = f"{label_of(run.config, run.path.name)} ({suffix(run)})"
    return runs, problems


def series(run: Run, key: str, x: str) -> tuple[list[float], list[float]]:
    """(x, y) of ``key`` over the rows that log it; x is the step or cumulative tokens."""
    xs_all = [row["step"] for row in run.rows] if x == "step" else (tokens_axis(run.rows) or [])
    if not xs_all:
        return [], []
    pairs = [(xs_all[i], row[key]) for i, row in enumerate(run.rows) if key in row]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def final_value(run: Run, key: str) -> tuple[float, int] | None:
    """The last finite value of ``key`` and its step."""
    for row in reversed(run.rows):
        if key in row and math.isfinite(row[key]):
            return row[key], int(row["step"])
    return None


def best_value(run: Run, key: str) -> tuple[float, int] | None:
    """The largest finite value of ``key`` and its (first) step."""
    found = [(row[key], int(row["step"])) for row in run.rows if key in row]
    found = [f for f in found if math.isfinite(f[0])]
    return max(found, key=lambda f: (f[0], -f[1])) if found else None
