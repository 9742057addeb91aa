"""MathVista (Lu et al., 2024), ``AI4Math/MathVista`` testmini (1,000) and test (5,141, no answers).

Hub snapshot: ``README.md`` (``configs``: default, ``testmini: data/testmini-*``, ``test:
data/test-*``), ``data/testmini-00000-of-00001-*.parquet``, ``data/test-0000{0,1}-of-00002-*.parquet``,
``annot_testmini.json``, ``source.json``, ``images.zip``; the README block picks the parquet files.
``--split test`` has no public answers (the column is null): its predictions are written and
normalised, and its summary reports no accuracy (``Benchmark.unanswered_splits``), rather than
scoring every item against an empty answer.

Schema assumed (the hub's testmini columns): ``pid``, ``question``, ``image`` (path),
``decoded_image`` (image), ``choices`` (list or null), ``unit``, ``precision`` (float or null),
``answer``, ``question_type`` (``multi_choice`` / ``free_form``), ``answer_type`` (``text`` /
``integer`` / ``float`` / ``list``), ``metadata`` (``category``, ``context``, ``grade``,
``language``, ``skills`` (list), ``source``, ``split``, ``task``, ...), ``query``.

Prompt: the item's ``query`` (the official hint + question + choices), then our answer format.

Scoring follows the official ``calculate_score.py`` normalisation of an extracted answer:
multiple choice: a letter ``(X)`` or ``X`` becomes that choice's text, otherwise the closest
choice; integer: ``str(int(float(x)))``; float: ``str(round(float(x), precision))``; list: the
string. The prediction is correct when it equals the gold answer string. Breakdowns: the
official ``question_type``, ``answer_type``, ``language``, ``source``, ``category``, ``task``,
``context``, ``grade`` and ``skills`` (multi-label).

Where rules may differ from the official numbers (GPT-4 extraction):
- the answer is read by rules (``answers.final_answer``); a response with no boxed answer,
  answer tag, answer phrase or short final line counts wrong unless ``--judge`` is given;
- letters are also read in the forms "B." / "B)" / "\\text{B}" (GPT-4 reads those too);
- the official code maps *any* unmatched text to the nearest choice by edit distance; we do so
  only when the text is close (distance at most 40% of the longer string) or numerically equal
  to a choice, so an unreadable answer is wrong rather than a lucky guess;
- numbers with units or thousands separators ("12 cm", "1,024") are read as numbers, and float
  answers also match when equal after rounding (so "0.50" and "0.5" agree);
- lists are compared with whitespace removed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from stages.eval.answers import (
    choice_letter,
    edit_distance,
    final_answer,
    number_value,
    plain_number,
    unwrap_latex,
)
from stages.eval.benchmark import (
    Benchmark,
    Row,
    accuracy_summary,
    choice_lines,
)

BREAKDOWN_KEYS = (
    "question_type",
    "answer_type",
    "language",
    "source",
    "category",
    "task",
    "context",
    "grade",
    "skills",
)
CLOSE_CHOICE = 0.4  # edit distance / longer length at which text still names a choice

_HINTS = {
    "multi_choice": "Please answer the question and provide the correct option letter, "
    "e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final "
    "value, e.g., 1, 2, 3, at the end.",
    "float1": "Please answer the question requiring a floating-point number with one decimal "
    "place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    "float2": "Please answer the question requiring a floating-point number with two decimal "
    "places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the "
    "final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def _precision(value: Any) -> int | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else int(number)


def _built_query(raw: Row, choices: list[str] | None, precision: int | None) -> str:
    """The official query shape, for local copies that lack the ``query`` column."""
    if raw.get("question_type") == "multi_choice":
        hint = _HINTS["multi_choice"]
    elif raw.get("answer_type") == "float":
        hint = _HINTS["float1" if precision == 1 else "float2"]
    else:
        hint = _HINTS.get(str(raw.get("answer_type")), "")
    unit = f" (Unit: {raw['unit']})" if raw.get("unit") else ""
    text = f"Hint: {hint}\nQuestion: {raw['question']}{unit}"
    if choices:
        text += "\nChoices:\n" + choice_lines(choices)
    return text


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    pid = str(raw["pid"])
    choices = [str(c) for c in raw.get("choices") or []] or None
    precision = _precision(raw.get("precision"))
    text = raw.get("query") or _built_query(raw, choices, precision)
    metadata = dict(raw.get("metadata") or {})
    meta = {
        "pid": pid,
        "question_type": raw.get("question_type"),
        "answer_type": raw.get("answer_type"),
        "precision": precision,
        "unit": raw.get("unit"),
        "question_text": text,
        **{k: metadata.get(k) for k in BREAKDOWN_KEYS if k in metadata},
    }
    return {
        "id": f"mathvista-{pid}",
        "prompt": text,
        "images": images,
        "answer": "" if raw["answer"] is None else str(raw["answer"]),  # test: no answers
        "choices": choices,
        "source": "mathvista",
        "meta": meta,
    }


def extract(row: Row, response: str) -> str | None:
    return final_answer(response)


def _nearest_choice(text: str, choices: list[str]) -> str | None:
    """The choice ``text`` names: same number, or closest by edit distance when close enough."""
    value = plain_number(text)
    if value is not None:
        for choice in choices:
            if plain_number(choice) == value:
                return choice
    distances = [edit_distance(text, c) for c in choices]
    best = min(range(len(choices)), key=distances.__getitem__)
    longer = max(len(text), len(choices[best]), 1)
    return choices[best] if distances[best] / longer <= CLOSE_CHOICE else None


def normalise(row: Row, extracted: str | None) -> str | None:
    """The official normalisation of an extracted answer, or None when it names nothing."""
    if extracted is None:
        return None
    meta = row["meta"]
    text = unwrap_latex(extracted).strip()
    if meta.get("question_type") == "multi_choice":
        choices = row.get("choices") or []
        if not choices:
            return None
        if text in choices:
            return text
        official = re.search(r"\(([a-zA-Z])\)", text)  # calculate_score.py: "(X)" anywhere
        letter = official.group(1).upper() if official else None
        if letter is None or ord(letter) - ord("A") >= len(choices):
            letter = choice_letter(text, len(choices))
        if letter is not None:
            return choices[ord(letter) - ord("A")]
        return _nearest_choice(text, choices)
    answer_type = meta.get("answer_type")
    if answer_type == "integer":
        value = number_value(text)
        return str(int(value)) if value is not None else None
    if answer_type == "float":
        value = number_value(text)
        if value is None:
            return None
        precision = meta.get("precision")
        return str(round(value, precision)) if precision is not None else str(value)
    return "".join(text.split())


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    prediction = normalise(row, extracted)
    answer = row["answer"]
    correct = prediction is not None and prediction == answer
    meta = row["meta"]
    if not correct and prediction is not None and meta.get("question_type") != "multi_choice":
        if meta.get("answer_type") == "float":
            gold = plain_number(answer)
            precision = meta.get("precision")
            digits = precision if precision is not None else 6
            correct = gold is not None and round(float(prediction), digits) == round(gold, digits)
        elif meta.get("answer_type") not in ("integer",):
            correct = prediction == "".join(answer.split())
    return {"correct": correct, "normalised": prediction or ""}


def judge_hint(row: Row) -> str:
    if row["meta"].get("question_type") == "multi_choice":
        return "the option letter or the option text the response chooses"
    return f"the final {row['meta'].get('answer_type') or 'answer'} value the response gives"


BENCHMARK = Benchmark(
    name="mathvista",
    hub_id="AI4Math/MathVista",
    splits={"testmini": 1000, "test": 5141},
    default_split="testmini",
    build_row=build_row,
    image_columns=("decoded_image", "image"),
    extract=extract,
    check=check,
    summarise_rows=accuracy_summary(BREAKDOWN_KEYS),
    judge_hint=judge_hint,
    notes="rules read the answer instead of GPT-4; unmatched text maps to a choice only when close",
    unanswered_splits=("test",),
)
