"""``arithmetic``: the built-in, offline, text-only benchmark (the held-out ``test`` split of
``mgpo prepare arithmetic``).

It judges a policy trained on the built-in arithmetic task (e.g. ``--recipe smollm2_arithmetic``)
on expressions no training run has seen: which split an expression belongs to is a hash of the
expression, so the test split never repeats a training or validation one. Items are exactly what
``mgpo prepare arithmetic --split test --difficulty LEVEL`` writes with its defaults (seed 0, 128
items per level) and are prompted with the same ``final_number`` template.

Without ``--subset`` every level is evaluated (easy, medium, hard: 384 items) and the summary
breaks accuracy down by difficulty; ``--subset easy|medium|hard`` evaluates one level.

Scoring is the ``last_number`` reward's accuracy: the last number of the response (of its last
``\\boxed{}`` if any) equals the exact answer as a decimal number. Not in ``mgpo eval all``.
"""

from __future__ import annotations

from typing import Any

from stages.eval.benchmark import Row, Subset, accuracy_summary
from stages.eval.generated import GeneratedBenchmark
from stages.score import last_number_reward, same_number

SPLITS = {"train": 512, "validation": 64, "test": 128}  # per level: the generator's defaults
LEVELS = ("easy", "medium", "hard")
ALL = "all"
TEMPLATE = "final_number"  # what mgpo prepare arithmetic uses, so prompts match training
MAX_NEW_TOKENS = 24  # as the smollm2_arithmetic recipe trains; raise it with --max-new-tokens


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    return {
        "id": str(raw["id"]),
        "prompt": str(raw["problem"]),
        "images": [],
        "answer": str(raw["answer"]),
        "choices": None,
        "source": "arithmetic",
        "meta": {**raw["meta"], "question_text": str(raw["problem"])},
    }


def extract(row: Row, response: str) -> str | None:
    return last_number_reward(response, str(row["answer"]))["extracted"] or None


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    normalised = (extracted or "").strip()
    return {
        "correct": bool(normalised) and same_number(normalised, str(row["answer"])),
        "normalised": normalised,
    }


def judge_hint(row: Row) -> str:
    return "the final integer the response gives as the value of the expression"


BENCHMARK = GeneratedBenchmark(
    name="arithmetic",
    hub_id="(built-in)",
    splits={split: size * len(LEVELS) for split, size in SPLITS.items()},
    default_split="test",
    build_row=build_row,
    image_columns=(),
    extract=extract,
    check=check,
    summarise_rows=accuracy_summary(("difficulty",)),
    judge_hint=judge_hint,
    subsets={ALL: Subset("difficulty", LEVELS), **{d: Subset("difficulty", (d,)) for d in LEVELS}},
    template=TEMPLATE,
    default_subset=ALL,
    max_new_tokens=MAX_NEW_TOKENS,
    notes="built-in; last_number accuracy (last number of the response equals the exact answer)",
)
