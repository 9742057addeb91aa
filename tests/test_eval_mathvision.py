"""MathVision: the hub snapshot (parquet with ``decoded_image``) and the GitHub release (JSONL
with relative image paths), options, the official trailing-letter rule, and free-form answers
compared as numbers at 2 decimals after evaluating LaTeX, as the official ``is_equal`` does."""

from __future__ import annotations

import pytest

from eval_fixtures import mathvision_record, tree, write_mathvision, write_mathvision_github
from stages.errors import MgpoError
from stages.eval import get_benchmark, score_rows

BENCH = get_benchmark("mathvision")
OPTIONS = ["1", "2", "3", "4", "5"]

TEST = [
    mathvision_record(1, "C", OPTIONS, level=1, subject="arithmetic"),
    mathvision_record(2, "2.5", [], level=2, subject="metric geometry - length"),
    mathvision_record(3, "B", ["A", "B", "C", "D", "E"], level=2, subject="arithmetic"),
    # LaTeX gold answers with a numeric value, as 86 free-form answers of the real test set are
    mathvision_record(4, "$\\frac{1}{3}$", [], level=3, subject="algebra"),
    mathvision_record(5, "$2 \\sqrt{2}$", [], level=3, subject="metric geometry - length"),
    mathvision_record(6, "B", ["$\\frac{1}{4}$", "$\\frac{1}{3}$", "$\\frac{1}{2}$"], 4, "algebra"),
]
TESTMINI = [mathvision_record(9, "A", OPTIONS, level=5, subject="topology")]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_mathvision(tmp_path_factory.mktemp("mvis"), {"test": TEST, "testmini": TESTMINI})


@pytest.fixture(scope="module")
def rows(source):
    return {row["meta"]["mathvision_id"]: row for row in BENCH.load(source=source)}


def test_hub_snapshot_splits_and_decoded_images(source, rows):
    assert tree(source) == [
        "README.md",
        "assets/figure1_new.png",
        "data/test-00000-of-00001-3532b8d3f1b4047a.parquet",
        "data/testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet",
        "images.zip",
    ]
    assert list(rows) == [str(i) for i in range(1, 7)]  # default split: test
    mini = BENCH.load(source=source, split="testmini")
    assert [r["id"] for r in mini] == ["mathvision-9"]
    row = rows["1"]
    assert row["images"][0].getpixel((0, 0)) == (10, 120, 10)  # decoded_image, not the path
    assert "\nChoices:\n(A) 1\n(B) 2\n(C) 3\n(D) 4\n(E) 5" in row["prompt"]
    assert row["prompt"].startswith("<image><image1> Problem 1.")
    assert rows["2"]["choices"] is None and "Choices" not in rows["2"]["prompt"]


def test_a_split_missing_from_the_snapshot_names_the_readme(tmp_path):
    folder = write_mathvision(tmp_path, {"testmini": TESTMINI})
    with pytest.raises(MgpoError, match="README.md: split 'test' is data/test-\\*, which matches"):
        BENCH.load(source=folder)


def test_github_release_with_relative_image_paths(tmp_path):
    folder = write_mathvision_github(tmp_path, {"test": TEST, "testmini": TESTMINI})
    rows = BENCH.load(source=folder)
    assert [r["meta"]["mathvision_id"] for r in rows] == [str(i) for i in range(1, 7)]
    assert rows[0]["images"][0].getpixel((0, 0)) == (10, 120, 10)
    assert [r["id"] for r in BENCH.load(source=folder, split="testmini")] == ["mathvision-9"]
    (folder / "images" / "2.jpg").unlink()
    with pytest.raises(
        MgpoError, match="mathvision test row 1 image 0: image file .*images/2.jpg not found"
    ):
        BENCH.load(source=folder)
    only_test = write_mathvision_github(tmp_path / "other", {"testmini": TESTMINI})
    with pytest.raises(MgpoError, match="no files for split 'test' \\(found: testmini\\)"):
        BENCH.load(source=only_test)


CASES = [
    ("1", "\\boxed{C}", True),
    ("1", "\\boxed{(c)}", True),  # case-insensitive, as the official lower-casing
    ("1", "\\boxed{3}", True),  # the chosen option's value
    ("1", "So the answer is C.", True),
    ("1", "Counting the squares gives the last option, which is C.", True),  # trailing letter
    ("1", "Hence bar C.", True),  # one short line: the official trailing-letter rule first
    ("1", "It is the bar (C).", True),
    ("1", "C\nBecause the third bar is tallest.", True),  # a letter on the first line
    ("1", "<think>maybe B</think>\n(C)\nthe tallest", True),  # after our think block
    ("1", "\\boxed{3}, i.e. option D.", False),  # the official rule overrides the box
    ("1", "Hence bar D.", False),
    ("1", "\\boxed{D}", False),
    ("1", "\\boxed{4}", False),
    ("2", "\\boxed{2.5}", True),
    ("2", "\\boxed{2.50}", True),
    ("2", "\\boxed{2.504}", True),  # equal at 2 decimals
    ("2", "\\boxed{\\frac{5}{2}}", True),
    ("2", "\\boxed{2.51}", False),
    ("2", "\\boxed{C}", False),  # no options: a letter is not an answer
    ("3", "\\boxed{B}", True),  # options that are only letters
    ("4", "\\boxed{0.33}", True),  # LaTeX gold vs its 2-decimal value
    ("4", "\\boxed{\\frac{2}{6}}", True),
    ("4", "\\boxed{0.333}", True),
    ("4", "\\boxed{0.34}", False),
    ("4", "\\boxed{0.3}", False),
    ("5", "\\boxed{2.83}", True),
    ("5", "\\boxed{\\sqrt{8}}", True),
    ("5", "\\boxed{2.82}", False),
    ("6", "\\boxed{0.33}", True),  # the chosen option's LaTeX value, at 2 decimals
    ("6", "\\boxed{B}", True),
    ("6", "\\boxed{0.25}", False),
]


@pytest.mark.parametrize(("ident", "response", "correct"), CASES)
def test_scoring(rows, ident, response, correct):
    assert BENCH.score(rows[ident], response)["correct"] is correct


def test_summary_per_level_and_subject(rows):
    ordered = [rows[i] for i in ("1", "2", "3")]
    summary = BENCH.summarise(score_rows(BENCH, ordered, ["\\boxed{C}", "\\boxed{3}", "(B)"]))
    assert (summary["correct"], summary["total"]) == (2, 3)
    assert summary["breakdowns"]["level"] == {
        "1": {"correct": 1, "total": 1, "accuracy": 1.0},
        "2": {"correct": 1, "total": 2, "accuracy": 0.5},
    }
    assert summary["breakdowns"]["subject"]["arithmetic"]["correct"] == 2
