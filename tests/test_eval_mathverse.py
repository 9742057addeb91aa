"""MathVerse: the hub snapshot, versions, subsets, query variants, letters (Vision Only rows
included) and the real data's non-letter multiple-choice answers, and math-aware free form."""

from __future__ import annotations

import pytest

from eval_fixtures import mathverse_record, tree, write_mathverse
from stages.errors import MgpoError
from stages.eval import get_benchmark, score_rows
from stages.eval.mathverse import letter_set, parse_choices

BENCH = get_benchmark("mathverse")
MC_QUESTION = "As shown, find angle ABC.\nChoices:\nA:30°\nB:60°\nC:90°\nD:120°"
FF_QUESTION = "Find the height of the triangle."

# Multiple-choice answers of the real testmini that are not one letter (problems 339, 429, 440,
# 517 of the published text-only file), with their questions' choice formats.
BEARING = "Find the true bearing of B from A.\nChoice:\nA. 090^\\circ T\nB. 180^\\circ T"
TRUE_FALSE = "True or false: the side is opposite.\nChoice:\nA. True\nB. False"
TWO = "Which two are opposite?\nChoose 2 answers:\nChoices:\nA:$x$\nB:$y$\nC:$-x$\nD:$-y$"
NO_SPACE = "Rate of increase?\nChoices:\nA.constant\nB.decreasing\nC.increasing"

RECORDS = [
    mathverse_record(1, 1, "Text Dominant", MC_QUESTION, "B", "multi-choice"),
    mathverse_record(2, 1, "Vision Intensive", MC_QUESTION, "B", "multi-choice"),
    mathverse_record(3, 1, "Vision Only", "", "B", "multi-choice", question_for_eval=MC_QUESTION),
    mathverse_record(4, 2, "Text Dominant", FF_QUESTION, "\\frac{\\sqrt{3}}{2}", "free-form"),
    mathverse_record(
        5, 2, "Vision Only", "", "\\frac{\\sqrt{3}}{2}", "free-form", question_for_eval=FF_QUESTION
    ),
    mathverse_record(6, 3, "Text Lite", BEARING, "090^\\circ T", "multi-choice"),
    mathverse_record(7, 4, "Text Lite", TRUE_FALSE, "False", "multi-choice"),
    mathverse_record(8, 5, "Text Lite", TWO, "C\nD", "multi-choice"),
    mathverse_record(9, 6, "Vision Only", "", "(C)", "multi-choice", question_for_eval=NO_SPACE),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_mathverse(tmp_path_factory.mktemp("mverse"), RECORDS)


@pytest.fixture(scope="module")
def rows(source):
    return {row["meta"]["sample_index"]: row for row in BENCH.load(source=source)}


def test_load_uses_query_cot_by_default_and_query_wo_on_request(source, rows):
    assert rows["1"]["prompt"].startswith("<image>COT: Please first conduct reasoning")
    wo = BENCH.load(source=source, query="wo", limit=1)[0]
    assert wo["prompt"].startswith("<image>WO: Please directly answer")
    assert rows["1"]["choices"] == ["30°", "60°", "90°", "120°"]
    # vision only: the question is in the image; its choices are read from question_for_eval
    assert rows["3"]["prompt"].startswith("<image>COT: According to the question shown")
    assert "Choices" not in rows["3"]["prompt"]
    assert rows["3"]["choices"] == ["30°", "60°", "90°", "120°"]
    assert rows["3"]["meta"]["question_text"] == MC_QUESTION
    assert rows["4"]["choices"] is None  # free form
    assert rows["4"]["meta"]["subfield"] == "Length"
    assert rows["6"]["choices"] == ["090^\\circ T", "180^\\circ T"]  # "Choice:" and "A. x"
    assert rows["9"]["choices"] == ["constant", "decreasing", "increasing"]  # "A.x"


def test_hub_snapshot_reads_the_configured_parquet_only(source):
    """The published tree: README configs, testmini.parquet beside testmini.json (image paths)
    and the text-only files. Reading the JSON too used to crash on the image column."""
    assert tree(source) == [
        "README.md",
        "images.zip",
        "testmini.json",
        "testmini.parquet",
        "testmini_text_only.json",
        "testmini_text_only.parquet",
    ]
    rows = BENCH.load(source=source)
    assert [r["meta"]["sample_index"] for r in rows] == [str(i) for i in range(1, 10)]
    assert all(len(r["images"]) == 1 for r in rows)
    (source / "README.md").rename(source / "card.md")  # without the card: parquet before json
    try:
        assert len(BENCH.load(source=source)) == len(RECORDS)
    finally:
        (source / "card.md").rename(source / "README.md")


def test_vision_only_subset(source):
    rows = BENCH.load(source=source, subset="vision_only")
    assert [r["meta"]["sample_index"] for r in rows] == ["3", "5", "9"]
    assert {r["meta"]["problem_version"] for r in rows} == {"Vision Only"}


def test_unknown_subset_and_query_are_one_line_errors(source):
    with pytest.raises(MgpoError, match="no subset 'vision'") as error:
        BENCH.load(source=source, subset="vision")
    assert "\n" not in str(error.value)
    with pytest.raises(MgpoError, match="no query 'cot2'"):
        BENCH.load(source=source, query="cot2")


CASES = [
    ("1", "\\boxed{B}", True),
    ("1", "\\boxed{B:60°}", True),
    ("1", "\\boxed{60°}", True),  # the option's text, mapped to its letter
    ("1", "\\boxed{A}", False),
    ("2", "The answer is (B).", True),
    ("3", "\\boxed{B}", True),
    ("3", "\\boxed{60°}", True),  # vision only: option text maps through question_for_eval
    ("3", "\\boxed{90°}", False),
    ("6", "\\boxed{A}", True),  # gold given as option text: its letter counts
    ("6", "\\boxed{090^\\circ T}", True),  # and so does the text
    ("6", "\\boxed{B}", False),
    ("7", "\\boxed{B}", True),
    ("7", "The answer is False.", True),
    ("7", "\\boxed{A}", False),
    ("8", "\\boxed{C, D}", True),  # choose 2: both and only both
    ("8", "The answer is C and D.", True),
    ("8", "\\boxed{C}", False),
    ("8", "\\boxed{B, C, D}", False),
    ("9", "\\boxed{C}", True),  # gold "(C)"
    ("9", "\\boxed{increasing}", True),
    ("9", "\\boxed{B}", False),
    ("4", "\\boxed{\\frac{\\sqrt3}{2}}", True),
    ("4", "\\boxed{\\dfrac{\\sqrt{3}}{2}}", True),
    ("4", "\\boxed{\\frac{1}{2}\\sqrt{3}}", True),
    ("4", "\\boxed{0.866}", False),  # an approximation of an exact answer is not the answer
    ("5", "\\boxed{\\sqrt{3}}", False),
]


@pytest.mark.parametrize(("sample", "response", "correct"), CASES)
def test_scoring(rows, sample, response, correct):
    assert BENCH.score(rows[sample], response)["correct"] is correct


def test_summary_per_version(rows):
    ordered = [rows[str(i)] for i in range(1, 6)]
    unsure = "The figure does not show enough to decide what the height is."
    responses = ["\\boxed{B}", "\\boxed{C}", "\\boxed{B}", "\\boxed{\\frac{\\sqrt{3}}{2}}", unsure]
    summary = BENCH.summarise(score_rows(BENCH, ordered, responses))
    assert (summary["correct"], summary["total"]) == (3, 5)
    versions = summary["breakdowns"]["problem_version"]
    assert versions["Text Dominant"] == {"correct": 2, "total": 2, "accuracy": 1.0}
    assert versions["Vision Intensive"] == {"correct": 0, "total": 1, "accuracy": 0.0}
    assert versions["Vision Only"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert summary["breakdowns"]["subfield"]["Angle"]["correct"] == 2
    assert summary["via"] == {"none": 1, "rule": 4}


def test_letter_sets():
    assert letter_set("B") == letter_set("(B)") == letter_set("B: 60°") == {"B"}
    assert letter_set("C\nD") == letter_set("C, D") == letter_set("D and C") == {"C", "D"}
    assert letter_set("\\text{A} \\text{C}") == {"A", "C"}
    assert letter_set("False") is None and letter_set("60°") is None


def test_parse_choices_shapes():
    assert parse_choices("Q\nChoices:\n(A) 1\n(B) 2") == ["1", "2"]
    assert parse_choices("Q\nChoice:\nA. True\nB. False") == ["True", "False"]
    assert parse_choices("Q\nChoices:\nA. x+1\nB. x-1\nC. 2x") == ["x+1", "x-1", "2x"]
    assert parse_choices("Q\nChoices:\nA:1\nC:2") is None  # letters out of order
    assert parse_choices("no choices here") is None
