"""Geometry3K test (Lu et al., 2021), ``hiyouga/geometry3k`` test (601): the paper's in-domain set.

Schema assumed (hub columns): ``images`` (list of images), ``problem`` (text with one ``<image>``
placeholder per image), ``answer``; splits train (2,101), validation (300), test (601). Rows have
no id column, so ids are ``geometry3k-SPLIT-INDEX`` (as ``mgpo prepare geometry3k`` names them).

Prompt: the problem, then our answer format (the training template).

Scoring: exactly the training reward's accuracy (``stages.score.math_reward``): the last
``\\boxed{}`` compared with the answer by math-verify. No answer phrase or judge is consulted
unless ``--judge`` is given and the response has no boxed answer, so this number is the one the
training curves report.
"""

from __future__ import annotations

from typing import Any

from stages.eval.answers import last_boxed
from stages.eval.benchmark import Benchmark, Row, accuracy_summary
from stages.score import is_correct

SPLITS = {"train": 2101, "validation": 300, "test": 601}


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    return {
        "id": f"geometry3k-{split}-{index:06d}",
        "prompt": str(raw["problem"]),
        "images": images,
        "answer": str(raw["answer"]),
        "choices": None,
        "source": "geometry3k",
        "meta": {"row": index, "question_text": str(raw["problem"])},
    }


def extract(row: Row, response: str) -> str | None:
    return last_boxed(response)


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    correct = extracted is not None and is_correct(extracted, row["answer"], row.get("choices"))
    return {"correct": correct, "normalised": (extracted or "").strip()}


def judge_hint(row: Row) -> str:
    return "the final answer (a number or expression) the response gives"


BENCHMARK = Benchmark(
    name="geometry3k",
    hub_id="hiyouga/geometry3k",
    splits=SPLITS,
    default_split="test",
    build_row=build_row,
    image_columns=("images",),
    extract=extract,
    check=check,
    summarise_rows=accuracy_summary(),
    judge_hint=judge_hint,
    notes="the training reward's accuracy (last boxed answer, math-verify)",
)
