"""``mgpo eval arithmetic``: the built-in task's test split, ``last_number`` accuracy, per level.

Hand-made responses for real test items of each difficulty are scored against a verdict written
in the table; the summary's per-difficulty counts are checked against the table's own tally.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from helpers import run_main
from stages.errors import MgpoError
from stages.eval import get_benchmark, read_summary, score_rows
from stages.prepare import DATASETS, PrepareOptions
from stages.prepare.run import prompt_rows
from stages.shards import open_shards

BENCH = get_benchmark("arithmetic")

# (response written from the item's answer A and expression E, correct?) -- the same rules as
# the training reward: the last number of the response (of its last \boxed{} if any) equals A.
CASES = [
    (lambda e, a: f"{e} = {a}", True),
    (lambda e, a: f"{a}", True),
    (lambda e, a: f"{a}.", True),
    (lambda e, a: f"The answer is {a}.0", True),
    (lambda e, a: f"\\boxed{{{a}}} and then 7", True),  # the boxed answer wins over later text
    (lambda e, a: f"{e} = {int(a) + 1}", False),
    (lambda e, a: f"{a} ... no wait, {int(a) - 10}", False),  # the last number counts
    (lambda e, a: "I cannot compute that.", False),
    (lambda e, a: "", False),
]
# How many of the first items of each level get each case (so the levels get different tallies).
TAKE = {"easy": 9, "medium": 6, "hard": 4}


def _table() -> tuple[list[dict], list[str], list[bool]]:
    rows, responses, expected = [], [], []
    for level, take in TAKE.items():
        items = BENCH.load(subset=level, limit=take)
        for item, (write, correct) in zip(items, CASES[:take], strict=True):
            rows.append(item)
            responses.append(write(item["meta"]["expression"], item["answer"]))
            expected.append(correct)
    return rows, responses, expected


def test_hand_made_predictions_are_scored_per_difficulty() -> None:
    rows, responses, expected = _table()
    scored = score_rows(BENCH, rows, responses)
    assert [r["correct"] for r in scored] == expected

    summary = BENCH.summarise(scored, split="test")
    right = Counter(json.loads(s["meta"])["difficulty"] for s in scored if s["correct"])
    by_level = summary["breakdowns"]["difficulty"]
    for level, take in TAKE.items():
        correct = sum(correct for _, correct in CASES[:take])
        assert right[level] == correct
        assert by_level[level] == {"correct": correct, "total": take, "accuracy": correct / take}
    assert summary["total"] == sum(TAKE.values())
    assert summary["headline"]["accuracy"] == pytest.approx(sum(expected) / len(expected))


def test_items_are_the_prepared_test_split_of_every_level() -> None:
    rows = BENCH.load()
    assert len(rows) == BENCH.splits["test"] == 3 * 128
    assert len({r["id"] for r in rows}) == len(rows)  # ids are unique across levels
    for level in ("easy", "medium", "hard"):
        options = PrepareOptions(name="arithmetic", split="test", difficulty=level)
        prepared = prompt_rows(options, DATASETS["arithmetic"])
        mine = [r for r in rows if r["meta"]["difficulty"] == level]
        assert [(r["id"], r["prompt"], r["answer"]) for r in mine] == [
            (r["id"], r["prompt"], r["answer"]) for r in prepared
        ]
    assert rows[0]["prompt"].endswith("Reply with only the final number.")
    assert [len(BENCH.load(subset=d)) for d in ("easy", "medium", "hard")] == [128, 128, 128]
    assert len(BENCH.load(split="validation", subset="easy")) == 64


def test_bad_subset_and_source_are_one_line() -> None:
    with pytest.raises(MgpoError, match="arithmetic: no subset 'colour'"):
        BENCH.load(subset="colour")
    with pytest.raises(MgpoError, match="generated locally"):
        BENCH.load(source=".")


@pytest.mark.slow
def test_cli_evaluates_the_text_model_with_its_own_response_budget(tmp_path: Path) -> None:
    out = tmp_path / "evals"
    result = run_main(
        "eval", "arithmetic", "--model", "tiny-text", "--out", out, "--limit", "5",
        "--dtype", "float32", "--device", "cpu", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = out / "tiny-text" / "arithmetic" / "test"
    summary = read_summary(folder / "summary.json")
    assert summary["total"] == 5 and summary["settings"]["max_new_tokens"] == 24
    assert set(summary["breakdowns"]["difficulty"]) == {"easy"}  # the first 5 items are easy
    rollouts = list(open_shards(folder / "rollouts", "rollouts").iter_rows())
    assert all(len(r["response_ids"]) <= 24 for r in rollouts)
