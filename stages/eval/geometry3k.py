"""Geometry3K test (Lu et al., 2021), ``hiyouga/geometry3k`` test (601): the paper's in-domain set.

Hub snapshot: ``README.md`` (``configs``: default, ``train: data/train-*``, ``validation:
data/validation-*``, ``test: data/test-*``) and one parquet file per split under ``data/``.
Columns of the current revision: ``images`` (list of images), ``problem`` (text with one
``<image>`` placeholder per image), ``answer`` (the choice's text, e.g. ``48``), ``id`` (int),
``choices`` (the four options' texts), ``ground_truth``; older copies have only the first three.
Splits train (2,101), validation (300), test (601). Ids are ``geometry3k-SPLIT-INDEX`` (as
``mgpo prepare geometry3k`` names them); the hub ``id`` is kept in ``meta``.

Prompt: the problem, then our answer format (the training template); ``--query choices`` also
lists the options as "(A) ..." lines (Inter-GPS's multiple-choice setting).

Scoring: exactly the training reward's accuracy (``stages.score.is_correct``): the last
``\\boxed{}`` compared with the answer by math-verify, and a letter counts for the choice it
names only when the prompt showed the lettered choices (``stages.score.shown_choices``, the same
rule the ``math`` reward applies to training prompts). So with the default query ``\\boxed{B}``
is wrong for gold ``48`` in training and here alike, and right in both when the prompt listed
"(B) 48". No answer phrase or judge is consulted unless ``--judge`` is given and the response
has no boxed answer, so this number is the one the training curves report.
"""

from __future__ import annotations

from typing import Any

from stages.errors import MgpoError
from stages.eval.answers import last_boxed
from stages.eval.benchmark import Benchmark, Row, accuracy_summary, choice_lines
from stages.score import is_correct, shown_choices

SPLITS = {"train": 2101, "validation": 300, "test": 601}


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    choices = [str(c) for c in raw.get("choices") or []] or None
    text = str(raw["problem"])
    if query == "choices":
        if not choices:
            raise MgpoError(
                f"geometry3k {split} row {index}: --query choices needs a 'choices' column"
            )
        text += "\nChoices:\n" + choice_lines(choices)
    meta = {"row": index, "question_text": text}
    if raw.get("id") is not None:
        meta["geometry3k_id"] = raw["id"]
    return {
        "id": f"geometry3k-{split}-{index:06d}",
        "prompt": text,
        "images": images,
        "answer": str(raw["answer"]),
        "choices": choices,
        "source": "geometry3k",
        "meta": meta,
    }


def extract(row: Row, response: str) -> str | None:
    return last_boxed(response)


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    shown = shown_choices(row.get("prompt"), row.get("choices"))
    correct = extracted is not None and is_correct(extracted, row["answer"], shown)
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
    queries=("standard", "choices"),
    notes="the training reward's accuracy (last boxed answer, math-verify)",
)
