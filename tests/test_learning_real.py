"""``benchmarks/learning_real.py``: the pre-registered study's statistics, and the whole study at
a toy budget (the tiny text model, 1 step, 1 seed, 2 algorithms) killed and resumed."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "learning_real.py"
_spec = importlib.util.spec_from_file_location("learning_real", SCRIPT)
study = importlib.util.module_from_spec(_spec)
sys.modules["learning_real"] = study  # dataclasses look their module up while it loads
_spec.loader.exec_module(study)


def _rows() -> list[dict]:
    """Hand-made finished runs: 3 seeds of grpo and mgpo, 2 of gspo (one seed missing)."""
    after = {
        "grpo": [0.30, 0.40, 0.35],
        "mgpo-0.5": [0.40, 0.42, 0.45],
        "gspo": [0.20, 0.50],
    }
    spread = {"grpo": 2.0, "mgpo-0.5": 1.0, "gspo": 0.5}
    return [
        {"algo": algo, "seed": seed, "after": value, "before": 0.15, "ratio_spread": spread[algo]}
        for algo, values in after.items()
        for seed, value in enumerate(values)
    ]


def test_mean_sd_and_t_interval_against_plain_formulas() -> None:
    values = [0.10, 0.02, 0.10]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert study.mean_sd(values) == pytest.approx((mean, sd))
    low, high = study.t_interval(values)
    assert (low, high) == pytest.approx(
        (mean - 4.303 * sd / math.sqrt(3), mean + 4.303 * sd / 3**0.5)
    )
    assert study.t_interval([0.1]) is None and study.mean_sd([0.1]) == (0.1, 0.0)
    assert study.binomial_sd(0.25, 128) == pytest.approx(math.sqrt(0.25 * 0.75 / 128))


def test_paired_differences_use_only_seeds_both_finished() -> None:
    paired = study.paired_to_baseline(_rows())
    assert paired["mgpo-0.5"] == pytest.approx({0: 0.10, 1: 0.02, 2: 0.10})
    assert paired["gspo"] == pytest.approx({0: -0.10, 1: 0.10})
    assert "grpo" not in paired
    table = "\n".join(study.paired_table(_rows()))
    # mgpo: mean +7.3, interval 7.33 +- 4.303 * 0.0462 / sqrt 3 = [-4.1, +18.8] -> not found
    assert (
        "| mgpo-0.5 | +10.0 (seed 0), +2.0 (seed 1), +10.0 (seed 2) | +7.3 | [-4.1, +18.8] | no |"
        in table
    )


def test_tables_and_spread_ordering() -> None:
    table = "\n".join(study.accuracy_table(_rows()))
    assert "| grpo | 3 | 15.0 | 35.0 ± 5.0 | +20.0 | 30.0, 40.0, 35.0 |" in table
    assert "| gspo | 2 | 15.0 | 35.0 ± 21.2 | +20.0 | 20.0, 50.0 |" in table
    assert "appears" in study.spread_ordering(_rows())
    flat = [dict(r, ratio_spread=1.0) for r in _rows()]
    assert "does not appear" in study.spread_ordering(flat)
    assert "not all three" in study.spread_ordering([r for r in _rows() if r["algo"] != "gspo"])


def test_the_registered_study_is_the_issue_s_design() -> None:
    registered = study.STUDY
    assert set(registered.algos) == {"grpo", "gspo", "mgpo-0.5", "mgpo-dyn", "sapo"}
    assert len(registered.seeds) >= 3 and registered.test_limit is None
    assert registered.budget() in " ".join(study.__doc__.split())  # the docstring states it


def test_seeds_option_and_one_study_per_workdir(tmp_path: Path) -> None:
    """``--seeds`` (a replication) parses distinct non-negative integers; a workdir refuses a
    resume with other settings, so a replication needs its own workdir."""
    import argparse
    from dataclasses import replace

    assert study.seed_list("3,4,5") == (3, 4, 5)
    for bad in ("3,x", "", "1,1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            study.seed_list(bad)
    study.check_same_study(tmp_path, study.STUDY)
    study.check_same_study(tmp_path, study.STUDY)  # the same settings resume
    with pytest.raises(SystemExit, match="other settings"):
        study.check_same_study(tmp_path, replace(study.STUDY, seeds=(3, 4, 5)))


def _start(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(SCRIPT), "--toy", "--workdir", str(workdir)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
def test_toy_study_end_to_end_killed_and_resumed(tmp_path: Path) -> None:
    work = tmp_path / "study"
    first = work / "runs" / "grpo-seed0" / "study.json"
    second = work / "runs" / "mgpo-0.5-seed0" / "study.json"
    process = _start(work)
    deadline = time.monotonic() + 600
    while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.is_file() and process.poll() is None, process.communicate()[0][-3000:]
    os.killpg(process.pid, signal.SIGKILL)  # the study and every mgpo command it started
    process.wait()
    assert not second.is_file() and not (work / "results.md").exists()
    finished = first.read_text()
    stamp = first.stat().st_mtime_ns
    metrics_before = (work / "runs" / "grpo-seed0" / "metrics.jsonl").read_text()

    resumed = _start(work)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    # The finished run was kept as it was; the killed one ran to the end.
    assert first.read_text() == finished and first.stat().st_mtime_ns == stamp
    assert (work / "runs" / "grpo-seed0" / "metrics.jsonl").read_text() == metrics_before
    assert (work / "logs" / "grpo-seed0.log").read_text().count("$ mgpo train") == 1
    assert second.is_file()

    with (work / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["algo"], r["seed"]) for r in rows] == [("grpo", "0"), ("mgpo-0.5", "0")]
    for row in rows:
        run = work / "runs" / f"{row['algo']}-seed0"
        summary = next(run.glob("eval/*/arithmetic/test-easy/summary.json"))
        test = json.loads(summary.read_text())
        assert float(row["after"]) == test["accuracy"] and int(row["items"]) == test["total"] == 4
        assert not (run / "final").exists()  # weights removed once evaluated
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == [1]
        assert float(row["ratio_spread"]) == pytest.approx(steps[0]["ratio_spread"])
    results = (work / "results.md").read_text()
    assert "Finished runs: 2 of 2" in results and "| mgpo-0.5 | +" in results
    assert "1 steps x 2 prompts x 2 samples = 4 samples" in results
    assert (work / "report" / "index.html").is_file() and (work / "dynamics.csv").is_file()
