"""MathVerse: versions, subsets, query variants, letters and math-aware free form."""

from __future__ import annotations

import pytest

from eval_fixtures import mathverse_record, write_mathverse
from stages.errors import MgpoError
from stages.eval import get_benchmark, score_rows
from stages.eval.mathverse import parse_choices

BENCH = get_benchmark("mathverse")
MC_QUESTION = "As shown, find angle ABC.\nChoices:\nA:30°\nB:60°\nC:90°\nD:120°"
FF_QUESTION = "Find the height of the triangle."

RECORDS = [
    mathverse_record(1, 1, "Text Dominant", MC_QUESTION, "B", "multi-choice"),
    mathverse_record(2, 1, "Vision Intensive", MC_QUESTION, "B", "multi-choice"),
    mathverse_record(3, 1, "Vision Only", "", "B", "multi-choice"),
    mathverse_record(4, 2, "Text Dominant", FF_QUESTION, "\\frac{\\sqrt{3}}{2}", "free-form"),
    mathverse_record(5, 2, "Vision Only", "", "\\frac{\\sqrt{3}}{2}", "free-form"),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_mathverse(tmp_path_factory.mktemp("mverse"), RECORDS)


@pytest.fixture(scope="module")
def rows(source):
    return {row["meta"]["sample_index"]: row for row in BENCH.load(source=source)}


def test_load_uses_query_cot_by_default_and_query_wo_on_request(source, rows):
    assert rows["1"]["prompt"].startswith("<image>COT: reason first.")
    wo = BENCH.load(source=source, query="wo", limit=1)[0]
    assert wo["prompt"].startswith("<image>WO: answer directly.")
    assert rows["1"]["choices"] == ["30°", "60°", "90°", "120°"]
    assert rows["3"]["choices"] is None  # vision only: the choices are in the image
    assert rows["4"]["choices"] is None  # free form
    assert rows["4"]["meta"]["subfield"] == "Length"


def test_hub_snapshot_layout_ignores_the_text_only_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = write_mathverse(tmp_path, RECORDS)
    text_only = pa.table({"sample_index": ["9"], "question": ["text only"], "answer": ["1"]})
    pq.write_table(text_only, folder / "testmini_text_only.parquet")
    rows = BENCH.load(source=folder)
    assert [r["meta"]["sample_index"] for r in rows] == ["1", "2", "3", "4", "5"]


def test_vision_only_subset(source):
    rows = BENCH.load(source=source, subset="vision_only")
    assert [r["meta"]["sample_index"] for r in rows] == ["3", "5"]
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
    ("3", "\\boxed{60°}", False),  # vision only: no choices to map the text to
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
    ordered = list(rows.values())
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


def test_parse_choices_shapes():
    assert parse_choices("Q\nChoices:\n(A) 1\n(B) 2") == ["1", "2"]
    assert parse_choices("Q\nChoices:\nA. x+1\nB. x-1\nC. 2x") == ["x+1", "x-1", "2x"]
    assert parse_choices("Q\nChoices:\nA:1\nC:2") is None  # letters out of order
    assert parse_choices("no choices here") is None
