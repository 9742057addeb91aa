"""MathVista: loading a local copy in the hub schema and the official answer normalisation."""

from __future__ import annotations

import json

import pytest

from eval_fixtures import mathvista_record, tree, write_mathvista
from stages.eval import get_benchmark, score_rows

BENCH = get_benchmark("mathvista")

RECORDS = [
    mathvista_record("1", "5", "multi_choice", "text", choices=["3", "4", "5", "6"]),
    mathvista_record(
        "2",
        "decreasing",
        "multi_choice",
        "text",
        choices=["increasing", "decreasing"],
        task="figure question answering",
        skills=("statistical reasoning",),
    ),
    mathvista_record("3", "12", "free_form", "integer", task="math word problem"),
    mathvista_record("4", "1.5", "free_form", "float", precision=1.0),
    mathvista_record("5", "0.25", "free_form", "float", precision=2.0),
    mathvista_record(
        "6",
        "[2007, 2008]",
        "free_form",
        "list",
        task="figure question answering",
        skills=("statistical reasoning", "arithmetic reasoning"),
    ),
]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    source = write_mathvista(tmp_path_factory.mktemp("mv"), RECORDS)
    return {row["meta"]["pid"]: row for row in BENCH.load(source=source)}


def test_load_builds_prompt_rows_from_the_hub_schema(rows):
    assert list(rows) == ["1", "2", "3", "4", "5", "6"]
    row = rows["1"]
    assert row["id"] == "mathvista-1"
    assert row["answer"] == "5" and row["choices"] == ["3", "4", "5", "6"]
    assert row["prompt"].startswith("<image>Hint: answer it.\nQuestion: Question 1?\nChoices:")
    assert row["prompt"].count("<image>") == 1 == len(row["images"])
    assert "\\boxed{}" in row["prompt"]  # the training template's answer format
    assert row["images"][0].mode == "RGB" and row["images"][0].size == (8, 8)
    assert rows["4"]["meta"]["precision"] == 1 and rows["3"]["meta"]["precision"] is None
    assert rows["6"]["meta"]["skills"] == ["statistical reasoning", "arithmetic reasoning"]


CASES = [
    # multiple choice: letter -> choice text, the text itself, "(X)" anywhere, nearest choice
    ("1", "<think>x</think> \\boxed{C}", True, "5"),
    ("1", "\\boxed{(C)}", True, "5"),
    ("1", "\\boxed{5}", True, "5"),
    ("1", "So I pick option (c) here.\nAnswer: (C)", True, "5"),
    ("1", "\\boxed{5.0}", True, "5"),  # numerically equal to a choice
    ("1", "\\boxed{B}", False, "4"),
    ("2", "\\boxed{\\text{decreasing.}}", True, "decreasing"),  # edit distance 1: close
    ("2", "\\boxed{it goes down over time}", False, ""),  # far from every choice: no guess
    # integer: int(float(x)), so 12.7 truncates to 12 as in the official code
    ("3", "\\boxed{12}", True, "12"),
    ("3", "\\boxed{12.7}", True, "12"),
    ("3", "The answer is 12 cm.", True, "12"),
    ("3", "\\boxed{13}", False, "13"),
    # float: rounded to the item's precision
    ("4", "\\boxed{1.46}", True, "1.5"),
    ("4", "\\boxed{1.44}", False, "1.4"),
    ("5", "\\boxed{\\frac{1}{4}}", True, "0.25"),
    ("5", "\\boxed{0.2549}", True, "0.25"),
    # list: whitespace-normalised string
    ("6", "\\boxed{[2007,2008]}", True, "[2007,2008]"),
    ("6", "\\boxed{[2008, 2007]}", False, "[2008,2007]"),
]


@pytest.mark.parametrize(("pid", "response", "correct", "normalised"), CASES)
def test_scoring_each_answer_type(rows, pid, response, correct, normalised):
    result = BENCH.score(rows[pid], response)
    assert result["correct"] is correct
    assert result["normalised"] == normalised
    assert result["via"] == "rule"


def test_no_answer_is_wrong_and_marked(rows):
    long = "I looked at the figure carefully, but the lines overlap so much that I cannot say."
    result = BENCH.score(rows["3"], long)
    assert result == {"extracted": "", "via": "none", "correct": False, "normalised": ""}


def test_summary_breakdowns_by_task_and_skill(rows):
    responses = {
        "1": "\\boxed{C}",  # right
        "2": "\\boxed{A}",  # wrong
        "3": "\\boxed{12}",  # right
        "4": "\\boxed{9}",  # wrong
        "5": "\\boxed{0.25}",  # right
        "6": "\\boxed{[2007, 2008]}",  # right
    }
    ordered = list(rows.values())
    scored = score_rows(BENCH, ordered, [responses[r["meta"]["pid"]] for r in ordered])
    summary = BENCH.summarise(scored)
    assert summary["bench"] == "mathvista"
    assert (summary["correct"], summary["total"]) == (4, 6)
    assert summary["headline"] == {"accuracy": pytest.approx(4 / 6)}
    task = summary["breakdowns"]["task"]
    assert task["geometry problem solving"]["correct"] == 2  # items 1 and 5; 4 is wrong
    assert task["geometry problem solving"]["total"] == 3
    assert task["figure question answering"]["correct"] == 1
    assert task["figure question answering"]["total"] == 2
    assert task["math word problem"] == {"correct": 1, "total": 1, "accuracy": 1.0}
    skills = summary["breakdowns"]["skills"]  # multi-label: item 6 counts under both skills
    assert skills["statistical reasoning"]["total"] == 2
    assert skills["statistical reasoning"]["correct"] == 1
    assert skills["arithmetic reasoning"] == {"correct": 1, "total": 1, "accuracy": 1.0}
    assert skills["algebraic reasoning"] == {"correct": 3, "total": 4, "accuracy": 0.75}
    assert summary["breakdowns"]["answer_type"]["float"]["correct"] == 1
    assert summary["via"] == {"rule": 6}
    # eval shard rows carry meta as JSON and summarise reads them back the same way
    assert isinstance(scored[0]["meta"], str)
    assert BENCH.summarise(json.loads(json.dumps(scored))) == summary


def test_limit_keeps_the_first_rows(tmp_path):
    source = write_mathvista(tmp_path, RECORDS)
    assert [r["meta"]["pid"] for r in BENCH.load(source=source, limit=2)] == ["1", "2"]


def test_hub_snapshot_reads_the_configured_split(tmp_path):
    source = write_mathvista(tmp_path, RECORDS)
    top = ["README.md", "annot_testmini.json", "images.zip", "source.json"]
    data = ["test-00000-of-00002", "test-00001-of-00002-6a611c71596db30f"]
    data += ["testmini-00000-of-00001-725687bf7a18d64b"]
    assert tree(source) == sorted(top + [f"data/{name}.parquet" for name in data])
    assert len(BENCH.load(source=source)) == len(RECORDS)  # not the test files, not the JSON


def test_test_split_has_no_answers_so_no_accuracy(tmp_path):
    test = [
        mathvista_record("t1", None, "free_form", "integer", split="test"),
        mathvista_record("t2", None, "multi_choice", "text", choices=["3", "4"], split="test"),
        mathvista_record("t3", None, "free_form", "float", precision=1.0, split="test"),
    ]
    source = write_mathvista(tmp_path, RECORDS, test=test)
    rows = BENCH.load(source=source, split="test")  # two parquet files, as published
    assert [r["id"] for r in rows] == ["mathvista-t1", "mathvista-t2", "mathvista-t3"]
    assert [r["answer"] for r in rows] == ["", "", ""]  # null, not the string "None"
    scored = score_rows(BENCH, rows, ["\\boxed{12}", "\\boxed{B}", "about 1.54"])
    assert [r["normalised"] for r in scored] == ["12", "4", ""]  # predictions still normalised
    summary = BENCH.summarise(scored, split="test")
    assert summary["headline"] == {"accuracy": None} and "correct" not in summary
    assert summary["total"] == 3 and "no public answers" in summary["note"]
    assert BENCH.summarise(scored, split="testmini")["headline"] == {"accuracy": 0.0}
