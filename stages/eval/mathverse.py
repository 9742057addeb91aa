"""MathVerse (Zhang et al., 2024), ``AI4Math/MathVerse`` config/split ``testmini`` (3,940 rows:
788 problems x 5 versions); ``--subset vision_only`` keeps the 788 "Vision Only" rows, and
``text_dominant`` / ``text_lite`` / ``vision_intensive`` / ``vision_dominant`` the others.

Schema assumed (hub ``testmini`` features): ``sample_index``, ``problem_index``,
``problem_version``, ``question``, ``image`` (image), ``answer``, ``question_type``
(``multi-choice`` / ``free-form``), ``metadata`` (``split``, ``source``, ``subject``,
``subfield``), ``query_wo``, ``query_cot``, ``question_for_eval``.

Prompt: the item's ``query_cot`` (``--query cot``, default) or ``query_wo`` (``--query wo``),
then our answer format.

Scoring: the official pipeline has GPT-4 extract the answer, then GPT-4 judge it against the
gold answer ("consistent" when the letter matches for multiple choice, or the meaning matches
for free form, e.g. 0.5 m and 50 cm). Here: multiple choice compares the option letter (an
answer given as an option's text, when the choices can be read from the question, is mapped to
its letter); free form uses math-aware equality (math-verify). Breakdowns: per problem version
(the official table), subject, subfield and question type.

Where rules may differ from the GPT-4 judge:
- answers with different units (0.5 m vs 50 cm) or wordy answers (domains and ranges written in
  prose, "the function is increasing") are judged by meaning there and by expression here;
- in vision-only rows the choices are only in the image, so an option given as text (not a
  letter) cannot be mapped to its letter and counts wrong;
- a response with no boxed answer, answer tag, answer phrase or short final line counts wrong
  unless ``--judge`` is given.
"""

from __future__ import annotations

import re
from typing import Any

from stages.eval.answers import choice_letter, final_answer, math_equal, normalise_text
from stages.eval.benchmark import (
    Benchmark,
    Row,
    Subset,
    accuracy_summary,
)

BREAKDOWN_KEYS = ("problem_version", "subject", "subfield", "question_type")
VERSIONS = {
    "text_dominant": "Text Dominant",
    "text_lite": "Text Lite",
    "vision_intensive": "Vision Intensive",
    "vision_dominant": "Vision Dominant",
    "vision_only": "Vision Only",
}
_QUERY_COLUMNS = {"cot": "query_cot", "wo": "query_wo"}
_CHOICE_LINE = re.compile(r"^\s*\(?([A-H])\)?\s*[:.：)]\s*(.+?)\s*$", re.M)


def parse_choices(question: str) -> list[str] | None:
    """Options written in the question after "Choices:" as lines "A:..." / "(A) ..." / "A. ...".

    Returns them in letter order only when they run A, B, C, ... without a gap.
    """
    if not question:
        return None
    _, marker, tail = question.partition("Choices:")
    found = _CHOICE_LINE.findall(tail if marker else question)
    if not found or [L for L, _ in found] != [chr(ord("A") + i) for i in range(len(found))]:
        return None
    return [text for _, text in found]


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    text = raw.get(_QUERY_COLUMNS[query]) or raw.get("question") or ""
    metadata = dict(raw.get("metadata") or {})
    is_choice = str(raw.get("question_type", "")).startswith("multi")
    meta = {
        "sample_index": str(raw["sample_index"]),
        "problem_index": str(raw.get("problem_index", "")),
        "problem_version": raw.get("problem_version"),
        "question_type": raw.get("question_type"),
        "subject": metadata.get("subject"),
        "subfield": metadata.get("subfield"),
        "question_text": raw.get("question_for_eval") or raw.get("question") or text,
    }
    return {
        "id": f"mathverse-{raw['sample_index']}",
        "prompt": text,
        "images": images,
        "answer": str(raw["answer"]).strip(),
        "choices": parse_choices(raw.get("question") or "") if is_choice else None,
        "source": "mathverse",
        "meta": meta,
    }


def extract(row: Row, response: str) -> str | None:
    return final_answer(response)


def _letter(row: Row, extracted: str) -> str | None:
    """The option letter an answer names, directly or through the option's text."""
    letter = choice_letter(extracted)
    if letter is not None:
        return letter
    for i, choice in enumerate(row.get("choices") or []):
        if normalise_text(choice) == normalise_text(extracted) or math_equal(choice, extracted):
            return chr(ord("A") + i)
    return None


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    if extracted is None:
        return {"correct": False, "normalised": ""}
    answer = row["answer"]
    if str(row["meta"].get("question_type", "")).startswith("multi"):
        gold = choice_letter(answer) or answer.strip().upper()
        letter = _letter(row, extracted)
        return {"correct": letter == gold, "normalised": letter or ""}
    return {"correct": math_equal(answer, extracted), "normalised": extracted.strip()}


def judge_hint(row: Row) -> str:
    if str(row["meta"].get("question_type", "")).startswith("multi"):
        return "the option letter the response chooses"
    return "the final answer (a number, expression or short phrase) the response gives"


BENCHMARK = Benchmark(
    name="mathverse",
    hub_id="AI4Math/MathVerse",
    splits={"testmini": 3940},
    default_split="testmini",
    build_row=build_row,
    image_columns=("image",),
    extract=extract,
    check=check,
    summarise_rows=accuracy_summary(BREAKDOWN_KEYS),
    judge_hint=judge_hint,
    hub_configs={"testmini": "testmini"},
    subsets={name: Subset("problem_version", (value,)) for name, value in VERSIONS.items()},
    queries=("cot", "wo"),
    notes="free form by math-verify, not GPT-4 meaning; units and prose answers may differ",
)
