"""MATH-Vision (Wang et al., 2024), ``MathLLMs/MathVision`` test (3,040) and testmini (304).

Schema assumed (hub columns): ``id``, ``question``, ``options`` (list, empty for free form),
``image`` (path such as ``images/1.jpg``), ``decoded_image`` (image), ``answer`` (a letter for
multiple choice), ``solution``, ``level`` (1-5), ``subject``.

Prompt: the question, then its options as "(A) ..." lines when it has any, then our answer format.

Scoring follows the official ``evaluate.py``: the model answer is read from the response (last
``\\boxed{}``, else the "the answer is" phrases and trailing "... C." forms the official code
looks for), then it is correct when it equals the gold letter or the chosen option's value,
case-insensitively, or when both evaluate to the same number at 2 decimals. The official code
evaluates LaTeX with ``latex2sympy``; we use math-verify (``answers.math_equal`` with 2
decimals). Breakdowns: level and subject (the official per-level and per-subject accuracy).

Where rules may differ from the official numbers:
- math-verify parses some LaTeX that latex2sympy does not, and the reverse (matrices, intervals,
  answers with units), so a few free-form items can go either way;
- a response with no boxed answer, answer tag, answer phrase, short final line or trailing letter
  counts wrong unless ``--judge`` is given (the official code then compares the whole response).
"""

from __future__ import annotations

import re
from typing import Any

from stages.eval.answers import choice_letter, final_answer, math_equal, unwrap_latex
from stages.eval.benchmark import (
    Benchmark,
    Row,
    accuracy_summary,
    choice_lines,
)

BREAKDOWN_KEYS = ("level", "subject")
DECIMALS = 2
_TRAILING_LETTER = re.compile(r"(?:^|\s)\(?([A-E])\)?\.?\s*$")


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    options = [str(o) for o in raw.get("options") or []]
    text = str(raw["question"])
    if options:
        text += "\nChoices:\n" + choice_lines(options)
    meta = {
        "mathvision_id": str(raw["id"]),
        "level": raw.get("level"),
        "subject": raw.get("subject"),
        "question_text": text,
    }
    return {
        "id": f"mathvision-{raw['id']}",
        "prompt": text,
        "images": images,
        "answer": str(raw["answer"]).strip(),
        "choices": options or None,
        "source": "mathvision",
        "meta": meta,
    }


def extract(row: Row, response: str) -> str | None:
    found = final_answer(response)
    if found is not None:
        return found
    trailing = _TRAILING_LETTER.search(response.strip()) if row.get("choices") else None
    return trailing.group(1) if trailing else None


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    if extracted is None:
        return {"correct": False, "normalised": ""}
    text = unwrap_latex(extracted).rstrip(".").lstrip(":").strip()
    answer = row["answer"]
    options = row.get("choices") or []
    if options:
        letter = choice_letter(text, len(options))
        index = ord(answer.upper()) - ord("A") if len(answer) == 1 else -1
        value = options[index] if 0 <= index < len(options) else ""
        correct = letter == answer.upper() or math_equal(value, text, DECIMALS)
        return {"correct": correct, "normalised": letter or text}
    return {"correct": math_equal(answer, text, DECIMALS), "normalised": text}


def judge_hint(row: Row) -> str:
    if row.get("choices"):
        return "the option letter (or the option's value) the response chooses"
    return "the final answer (a number or expression) the response gives"


BENCHMARK = Benchmark(
    name="mathvision",
    hub_id="MathLLMs/MathVision",
    splits={"test": 3040, "testmini": 304},
    default_split="test",
    build_row=build_row,
    image_columns=("decoded_image", "image"),
    extract=extract,
    check=check,
    summarise_rows=accuracy_summary(BREAKDOWN_KEYS),
    judge_hint=judge_hint,
    notes="math-verify at 2 decimals in place of latex2sympy",
)
