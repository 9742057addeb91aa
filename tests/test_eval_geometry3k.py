"""Geometry3K: the training reward and the benchmark agree on letter answers.

The current hub revision carries ``choices`` (and ``id``, ``ground_truth``). ``\\boxed{B}`` must
count for the choice B only when the prompt showed the lettered choices: in training (real
``mgpo prepare geometry3k`` prompt shards from a snapshot laid out as published, then the real
``mgpo score`` stage with the ``math`` reward in its worker processes) and in ``mgpo eval``
(the benchmark's rows and its time-limited scoring) alike.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_fixtures import geometry3k_record, png, tree, write_geometry3k
from helpers import run_main
from stages.eval import get_benchmark, score_rows, score_rows_timed
from stages.shards import open_shards, write_shards

BENCH = get_benchmark("geometry3k")
CHOICES = ["48", "52", "60", "24"]
# Four problems whose gold choices are A, B, C and D: a fixed letter is right for one of them.
RECORDS = [geometry3k_record(10 + i, f"<image>Find x in {i}.", CHOICES, i) for i in range(4)]
# The options as "(A) 48" lines after the problem, then the training answer format.
LETTERED = (
    '{{ problem }}{% for c in choices %}\n({{ "ABCD"[loop.index0] }}) {{ c }}{% endfor %}'
    " Put the final answer in \\boxed{}."
)
LETTER_B = "<think>guess</think> \\boxed{B}"


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    return write_geometry3k(tmp_path_factory.mktemp("geo3k"), RECORDS)


def _train_accuracy(root: Path, prompts: Path, responses: list[str]) -> list[float]:
    """The ``math`` reward's accuracy of one response per prompt, by the real score stage."""
    ids = [row["id"] for row in open_shards(prompts, "prompts").iter_rows(["id"])]
    rows = [
        {
            "prompt_id": pid,
            "sample": 0,
            "response": text,
            "response_ids": [1],
            "logprobs": [-1.0],
            "finish_reason": "stop",
            "policy_step": 0,
        }
        for pid, text in zip(ids, responses, strict=True)
    ]
    rollouts = write_shards(root / "rollouts", "rollouts", rows, producer={"command": "test"})
    scores = root / "scores"
    result = run_main("score", "--rollouts", rollouts, "--prompts", prompts, "--out", scores)
    assert result.returncode == 0, result.stderr
    return [row["accuracy"] for row in open_shards(scores, "scores").iter_rows()]


def _prepare(snapshot: Path, out: Path, *template: str) -> Path:
    args = ("prepare", "geometry3k", "--split", "test", "--source", snapshot, "--out", out)
    result = run_main(*args, *template)
    assert result.returncode == 0, result.stderr
    return out


def _eval_correct(rows: list[dict], responses: list[str]) -> list[bool]:
    """In process, and through the timed worker path ``mgpo eval`` takes; both must agree."""
    plain = [r["correct"] for r in score_rows(BENCH, rows, responses)]
    timed = [r["correct"] for r in score_rows_timed(BENCH, rows, responses, workers=1)]
    assert plain == timed
    return plain


def test_snapshot_rows_carry_the_current_columns(snapshot):
    assert tree(snapshot) == [
        "README.md",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    rows = BENCH.load(source=snapshot)
    assert [r["id"] for r in rows] == [f"geometry3k-test-{i:06d}" for i in range(4)]
    assert rows[1]["answer"] == "52" and rows[1]["choices"] == CHOICES
    assert rows[1]["meta"]["geometry3k_id"] == 11
    assert "(B) 52" not in rows[1]["prompt"]


def test_a_letter_scores_nothing_when_the_prompt_showed_no_choices(snapshot, tmp_path):
    prompts = _prepare(snapshot, tmp_path / "prompts")
    prepared = list(open_shards(prompts, "prompts").iter_rows())
    assert [r["choices"] for r in prepared] == [CHOICES] * 4  # carried, not shown
    assert all("(B)" not in r["prompt"] for r in prepared)
    texts = [f"<think>t</think> \\boxed{{{c}}}" for c in CHOICES]
    train = _train_accuracy(tmp_path, prompts, [LETTER_B] * 4)
    evaluated = _eval_correct(BENCH.load(source=snapshot), [LETTER_B] * 4)
    assert train == [0.0, 0.0, 0.0, 0.0] and evaluated == [False] * 4
    # the gold text itself still scores, only for its own problem, in both
    train = _train_accuracy(tmp_path / "text", prompts, texts[1:2] * 4)
    evaluated = _eval_correct(BENCH.load(source=snapshot), texts[1:2] * 4)
    assert train == [0.0, 1.0, 0.0, 0.0] and evaluated == [False, True, False, False]


def test_a_letter_scores_the_same_in_both_when_the_prompt_showed_them(snapshot, tmp_path):
    template = tmp_path / "lettered.jinja"
    template.write_text(LETTERED)
    prompts = _prepare(snapshot, tmp_path / "prompts", "--template", template)
    prepared = list(open_shards(prompts, "prompts").iter_rows())
    assert "\n(B) 52\n" in prepared[1]["prompt"]
    rows = BENCH.load(source=snapshot, query="choices")
    assert "\nChoices:\n(A) 48\n(B) 52\n(C) 60\n(D) 24" in rows[1]["prompt"]
    train = _train_accuracy(tmp_path, prompts, [LETTER_B] * 4)
    evaluated = _eval_correct(rows, [LETTER_B] * 4)
    assert train == [0.0, 1.0, 0.0, 0.0] and evaluated == [False, True, False, False]


def test_choices_query_needs_the_choices_column(tmp_path):
    old = [{"images": [{"bytes": png(), "path": None}], "problem": "<image>x?", "answer": "3"}]
    folder = write_geometry3k(tmp_path, old)
    assert BENCH.load(source=folder)[0]["choices"] is None  # an older copy still loads
    from stages.errors import MgpoError

    with pytest.raises(MgpoError, match="--query choices needs a 'choices' column"):
        BENCH.load(source=folder, query="choices")
