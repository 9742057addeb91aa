"""Proof that training learns: the tiny recipe, end to end, lifts held-out accuracy far above chance.

One real run of the CLI (``mgpo prepare shapes --difficulty colour``, ``mgpo train --recipe tiny``,
``mgpo eval shapes``) on the built-in task: the randomly initialised tiny model answers no
validation item at the start (its greedy answer is not even one of the offered colours), and
after the recipe's 150 steps it must read the colour from the image on held-out drawings.

Why the thresholds are far from noise: an image-blind policy can do no better than the most
common answer on the validation set (0.33 here, computed below, not assumed); one item of 64 is
1.6 points, and a binomial standard deviation at 0.5 is 6 points. Four training seeds of this
recipe all reached 1.00 validation accuracy by step 150 (``benchmarks/learning_tiny.py`` and the
README have the curves), so the test asks for at least chance + 0.3, five standard deviations
above what an image-blind policy could reach, and checks the test split through ``mgpo eval``.

This is the slowest test in the suite (about 3-5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from helpers import run_cli
from stages.shards import open_shards

STEPS = 150
MARGIN = 0.30  # required lift over the image-blind chance level


def chance_level(prompts: Path) -> float:
    """Accuracy of always answering the most common answer (what no image reading can beat)."""
    answers = collections.Counter(
        row["answer"] for row in open_shards(prompts, "prompts").iter_rows(columns=["answer"])
    )
    return answers.most_common(1)[0][1] / sum(answers.values())


def test_tiny_recipe_learns_to_read_colours(tmp_path: Path, tiny_model_dir: Path) -> None:
    for split in ("train", "validation", "test"):
        prepared = run_cli(
            "prepare", "shapes", "--difficulty", "colour", "--split", split, cwd=tmp_path
        )
        assert prepared.returncode == 0, prepared.stderr
    trained = run_cli(
        "train",
        "--recipe",
        "tiny",
        "--steps",
        str(STEPS),
        "--set",
        "trainer.val_every=50",
        cwd=tmp_path,
        timeout=1500,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]

    run_dir = tmp_path / "runs" / "tiny"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = {row["step"]: row["val_accuracy"] for row in rows if "val_accuracy" in row}
    assert sorted(val) == [0, 50, 100, 150]
    chance = chance_level(tmp_path / "data" / "shapes" / "validation")
    assert 0.2 <= chance <= 0.4  # four colours, drawn uniformly
    assert val[0] <= chance, val
    assert val[STEPS] >= chance + MARGIN, f"validation accuracy {val}, chance {chance:.3f}"
    # reward rises too: the last 10 training steps against the first 10
    rewards = [row["reward_mean"] for row in rows if "reward_mean" in row]
    assert sum(rewards[-10:]) / 10 >= sum(rewards[:10]) / 10 + 0.3, rewards

    # the exported policy on the held-out test split, through the eval stage
    out = tmp_path / "eval"
    evaluated = run_cli(
        "eval",
        "shapes",
        "--subset",
        "colour",
        "--model",
        run_dir / "final",
        "--max-new-tokens",
        "1",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in out.rglob("summary.json")]
    assert summaries, list(out.rglob("*"))
    test_chance = chance_level(tmp_path / "data" / "shapes" / "test")
    accuracy = summaries[0]["headline"]["accuracy"]
    assert accuracy >= test_chance + MARGIN, (accuracy, test_chance)
