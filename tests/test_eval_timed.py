"""Eval scoring through the score stage's runner: real worker processes, a real time limit."""

from __future__ import annotations

import pytest

from eval_fixtures import mathverse_record
from stages.eval import get_benchmark, score_rows
from stages.eval.timed import score_item, score_rows_timed

BENCH = get_benchmark("mathverse")


class OneAnswerJudge:
    """A stand-in judge (the HTTP one is tested against a real server in test_eval_judge)."""

    def __init__(self) -> None:
        self.asked = 0

    def extract(self, question: str, response: str, hint: str) -> str | None:
        self.asked += 1
        return "B"


@pytest.fixture(scope="module")
def rows():
    records = [
        mathverse_record(1, 1, "Text Dominant", "Q\nChoices:\nA:1\nB:2", "B", "multi-choice"),
        mathverse_record(2, 2, "Text Lite", "Find x.", "\\frac{1}{2}", "free-form"),
        mathverse_record(3, 3, "Text Lite", "Find y.", "1", "free-form"),
        mathverse_record(4, 1, "Vision Only", "", "B", "multi-choice"),
    ]
    return [BENCH.build_row(r, i, "testmini", [], "cot") for i, r in enumerate(records)]


def test_score_item_is_a_reward_function(rows):
    import json

    item = {"benchmark": "mathverse", "meta": json.dumps(rows[1]["meta"]), "choices": None}
    result = score_item("\\boxed{0.5}", "\\frac{1}{2}", **item, prompt_id="x", sample=0)
    assert result == {"reward": 1.0, "ruled": 1.0, "extracted": "0.5"}


@pytest.mark.slow
def test_timed_scoring_matches_in_process_and_kills_a_hang(rows):
    responses = [
        "\\boxed{B}",
        "\\boxed{\\dfrac{1}{2}}",
        "\\boxed{9^{9^{9}}}",  # SymPy would build a 370-million-digit integer
        "I cannot read the options in this figure, so I will not guess an answer.",
    ]
    judge = OneAnswerJudge()
    timed = score_rows_timed(BENCH, rows, responses, judge=judge, workers=2, timeout_s=3.0)
    assert [r["via"] for r in timed] == ["rule", "rule", "timeout", "judge"]
    assert [r["correct"] for r in timed] == [True, True, False, True]
    assert judge.asked == 1
    plain = score_rows(BENCH, rows[:2], responses[:2])  # the same answers, read in-process
    for fast, slow in zip(plain, timed[:2], strict=True):
        assert (fast["correct"], fast["extracted"]) == (slow["correct"], slow["extracted"])
    summary = BENCH.summarise(timed)
    assert summary["via"] == {"judge": 1, "rule": 2, "timeout": 1}
