"""MathVision: JSONL with relative image paths, splits by file, options and 2-decimal free form."""

from __future__ import annotations

import pytest

from eval_fixtures import mathvision_record, write_mathvision
from stages.errors import MgpoError
from stages.eval import get_benchmark, score_rows

BENCH = get_benchmark("mathvision")
OPTIONS = ["1", "2", "3", "4", "5"]

TEST = [
    mathvision_record(1, "C", OPTIONS, level=1, subject="arithmetic"),
    mathvision_record(2, "2.5", [], level=2, subject="metric geometry - length"),
    mathvision_record(3, "B", ["A", "B", "C", "D", "E"], level=2, subject="arithmetic"),
]
TESTMINI = [mathvision_record(9, "A", OPTIONS, level=5, subject="topology")]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_mathvision(tmp_path_factory.mktemp("mvis"), {"test": TEST, "testmini": TESTMINI})


@pytest.fixture(scope="module")
def rows(source):
    return {row["meta"]["mathvision_id"]: row for row in BENCH.load(source=source)}


def test_split_files_and_relative_images(source, rows):
    assert list(rows) == ["1", "2", "3"]  # default split: test
    mini = BENCH.load(source=source, split="testmini")
    assert [r["id"] for r in mini] == ["mathvision-9"]
    row = rows["1"]
    assert row["images"][0].getpixel((0, 0)) == (10, 120, 10)
    assert "\nChoices:\n(A) 1\n(B) 2\n(C) 3\n(D) 4\n(E) 5" in row["prompt"]
    assert row["prompt"].startswith("<image><image1> Problem 1.")
    assert rows["2"]["choices"] is None and "Choices" not in rows["2"]["prompt"]


def test_missing_split_in_a_directory_is_an_error(tmp_path):
    folder = write_mathvision(tmp_path, {"testmini": TESTMINI})
    with pytest.raises(MgpoError, match="no files for split 'test' \\(found: testmini\\)"):
        BENCH.load(source=folder)


def test_missing_image_file_names_the_row(tmp_path):
    folder = write_mathvision(tmp_path, {"test": TEST})
    (folder / "images" / "2.jpg").unlink()
    with pytest.raises(
        MgpoError, match="mathvision test row 1 image 0: image file .*images/2.jpg not found"
    ):
        BENCH.load(source=folder)


CASES = [
    ("1", "\\boxed{C}", True),
    ("1", "\\boxed{(c)}", True),  # case-insensitive, as the official lower-casing
    ("1", "\\boxed{3}", True),  # the chosen option's value
    ("1", "So the answer is C.", True),
    ("1", "Counting the squares gives the last option, which is C.", True),  # trailing letter
    ("1", "\\boxed{D}", False),
    ("1", "\\boxed{4}", False),
    ("2", "\\boxed{2.5}", True),
    ("2", "\\boxed{2.50}", True),
    ("2", "\\boxed{2.504}", True),  # equal at 2 decimals
    ("2", "\\boxed{\\frac{5}{2}}", True),
    ("2", "\\boxed{2.51}", False),
    ("2", "\\boxed{C}", False),  # no options: a letter is not an answer
    ("3", "\\boxed{B}", True),  # options that are only letters
]


@pytest.mark.parametrize(("ident", "response", "correct"), CASES)
def test_scoring(rows, ident, response, correct):
    assert BENCH.score(rows[ident], response)["correct"] is correct


def test_summary_per_level_and_subject(rows):
    ordered = list(rows.values())
    summary = BENCH.summarise(score_rows(BENCH, ordered, ["\\boxed{C}", "\\boxed{3}", "(B)"]))
    assert (summary["correct"], summary["total"]) == (2, 3)
    assert summary["breakdowns"]["level"] == {
        "1": {"correct": 1, "total": 1, "accuracy": 1.0},
        "2": {"correct": 1, "total": 2, "accuracy": 0.5},
    }
    assert summary["breakdowns"]["subject"]["arithmetic"]["correct"] == 2
