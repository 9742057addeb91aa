"""MATH-Vision (Wang et al., 2024), ``MathLLMs/MathVision`` test (3,040) and testmini (304).

Hub snapshot: ``README.md`` (``configs``: default, ``test: data/test-*``, ``testmini:
data/testmini-*``), ``data/test-00000-of-00001-3532b8d3f1b4047a.parquet``,
``data/testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet``, ``images.zip``, ``assets/``. The
GitHub release (``mathllm/MATH-V``) is also read: ``data/test.jsonl``, ``data/testmini.jsonl``
and ``images/`` with ``image`` paths relative to the repository root (pass the root).

Schema assumed (hub columns): ``id``, ``question``, ``options`` (list, empty for free form),
``image`` (path such as ``images/1.jpg``), ``decoded_image`` (image, hub parquet only),
``answer`` (a letter for multiple choice), ``solution``, ``level`` (1-5), ``subject``.

Prompt: the question, then its options as "(A) ..." lines when it has any, then our answer format.

Scoring follows the official ``evaluation/evaluate.py`` and ``utils.py``:
- reading the answer: first the official trailing-letter rule on the whole response (after our
  ``<think>`` block): it ends with " X." or " (X).", or starts with "X" / "(X)" on a line of its
  own, X in A-E, then that letter is the answer, for every item as there; otherwise the last
  ``\\boxed{}``, answer tag, "the answer is" phrase or one short line (``answers.final_answer``);
- comparing: correct when it equals the gold letter or the chosen option's value
  (case-insensitive, as the official lower-casing), or when both sides evaluate to numbers equal
  after rounding to 2 decimals: the official ``is_equal`` evaluates LaTeX with latex2sympy and
  compares ``round(x, 2)``, so ``\\frac{1}{3}`` and ``0.33``, ``2\\sqrt{2}`` and ``2.83`` agree.
  We evaluate with math-verify (``answers.number_value``) and round the same way
  (``answers.math_equal`` with 2 decimals); two numbers that differ at 2 decimals are wrong
  whatever else, as there. Otherwise math-verify decides (the official code says wrong).
Breakdowns: level and subject (the official per-level and per-subject accuracy).

Where rules may differ from the official numbers:
- math-verify parses some LaTeX that latex2sympy does not, and the reverse (matrices, intervals,
  answers with units), so a few free-form items can go either way; where the official code
  gives up (an unparsable side), math-verify's symbolic equality may still say right;
- the official code treats the whole response as the answer when it finds no marker; we take
  it only when it is one short line, and a response with no boxed answer, answer tag, answer
  phrase, short final line or trailing letter counts wrong unless ``--judge`` is given;
- the official code reads "... is 12." as 12 when the text after the last "is " is a number;
  our answer phrase reads "the answer is 12" but not "the length is 12".
"""

from __future__ import annotations

from typing import Any

from stages.eval.answers import (
    choice_letter,
    final_answer,
    math_equal,
    unwrap_latex,
    without_think,
)
from stages.eval.benchmark import (
    Benchmark,
    Row,
    accuracy_summary,
    choice_lines,
)

BREAKDOWN_KEYS = ("level", "subject")
DECIMALS = 2
OFFICIAL_LETTERS = "ABCDE"


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


def official_letter(response: str) -> str | None:
    """The official trailing-letter rule: "... X." / "... (X)." at the end, or "X" / "(X)" /
    "(X) X" as the first line; the last such X of A-E in the official loop order."""
    text = without_think(response).strip()
    found = None
    for c in OFFICIAL_LETTERS:
        ends = text.endswith((f" {c}.", f" ({c})."))
        starts = text.startswith((f"{c}\n", f"({c})\n", f"({c}) {c}\n"))
        if ends or starts:
            found = c
    return found


def extract(row: Row, response: str) -> str | None:
    return official_letter(response) or final_answer(response)


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
