"""MathVerse (Zhang et al., 2024), ``AI4Math/MathVerse`` config/split ``testmini`` (3,940 rows:
788 problems x 5 versions); ``--subset vision_only`` keeps the 788 "Vision Only" rows, and
``text_dominant`` / ``text_lite`` / ``vision_intensive`` / ``vision_dominant`` the others.

Hub snapshot: ``README.md`` (``configs``: ``testmini: testmini.parquet``, ``testmini_text_only:
testmini_text_only.parquet``), ``testmini.parquet``, ``testmini.json`` (the same rows, images as
paths into ``images.zip``), ``testmini_text_only.{parquet,json}``, ``images.zip``. The README
block picks ``testmini.parquet``; a copy without it gets parquet before json.

Schema assumed (hub ``testmini`` features): ``sample_index``, ``problem_index``,
``problem_version``, ``question``, ``image`` (image), ``answer``, ``question_type``
(``multi-choice`` / ``free-form``), ``metadata`` (``split``, ``source``, ``subject``,
``subfield``), ``query_wo``, ``query_cot``, ``question_for_eval``. "Vision Only" rows have an
empty ``question`` (the problem is in the image); their full text, choices included, is in
``question_for_eval``, which is also what the official judge is shown.

Prompt: the item's ``query_cot`` (``--query cot``, default) or ``query_wo`` (``--query wo``),
then our answer format.

Scoring: the official pipeline (``evaluation/extract_answer_s1.py``, ``score_answer_s2.py``) has
GPT-4 extract the answer, then GPT-4 judge it against the gold answer given
``question_for_eval`` ("consistent" only when it completely matches the standard answer; for
free form when the meaning matches, e.g. 0.5 m and 50 cm); its optional ``--quick_match`` is
plain string equality. Here, by rules:
- multiple choice compares *sets of option letters*. The gold answer is usually one letter, but
  the real data also holds "(C)", two letters for "choose 2 answers" items ("C\\nD", "A\\nC":
  both and only both must be given) and option text ("False", "090^\\circ T": the letter of that
  option, or the text itself, counts). The response's answer is read as letters ("B", "(B)",
  "B: 60°", "C and D", "C, D") or, failing that, as an option's text mapped to its letter; the
  choices are read from ``question_for_eval`` ("Choices:" / "Choice:" lines "A:x", "A. x"),
  so Vision Only rows map option text too;
- free form uses math-aware equality (math-verify).
Breakdowns: per problem version (the official table), subject, subfield and question type.

Where rules may differ from the GPT-4 judge:
- answers with different units (0.5 m vs 50 cm) or wordy answers (domains and ranges written in
  prose, "the function is increasing") are judged by meaning there and by expression here;
- option text is matched to a choice by normalised string or math-verify equality, not meaning;
- a response with no boxed answer, answer tag, answer phrase or short final line counts wrong
  unless ``--judge`` is given.
"""

from __future__ import annotations

import re
from typing import Any

from stages.eval.answers import (
    choice_letter,
    final_answer,
    math_equal,
    normalise_text,
    unwrap_latex,
)
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
_CHOICE_LINE = re.compile(r"^[ \t]*\(?([A-H])\)?[ \t]*[:.：)][ \t]*(.*?)[ \t]*$", re.M)
_MARKER = re.compile(r"\bChoices?\s*:")
_LETTER_TOKEN = re.compile(r"^\(?([A-H])\)?[.:]?$")
_SEPARATORS = re.compile(r"(?:\s*(?:,|;|&|/|\band\b|\s)\s*)+", re.I)


def parse_choices(question: str) -> list[str] | None:
    """Options written after "Choices:" (or "Choice:") as lines "A:..." / "(A) ..." / "A. ...".

    Returns them in letter order only when they run A, B, C, ... without a gap.
    """
    if not question:
        return None
    parts = _MARKER.split(question)
    found = _CHOICE_LINE.findall(parts[-1] if len(parts) > 1 else question)
    if not found or [L for L, _ in found] != [chr(ord("A") + i) for i in range(len(found))]:
        return None
    return [text for _, text in found]


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    question = raw.get("question") or ""
    for_eval = raw.get("question_for_eval") or ""
    text = raw.get(_QUERY_COLUMNS[query]) or question
    metadata = dict(raw.get("metadata") or {})
    is_choice = str(raw.get("question_type", "")).startswith("multi")
    meta = {
        "sample_index": str(raw["sample_index"]),
        "problem_index": str(raw.get("problem_index", "")),
        "problem_version": raw.get("problem_version"),
        "question_type": raw.get("question_type"),
        "subject": metadata.get("subject"),
        "subfield": metadata.get("subfield"),
        "question_text": for_eval or question or text,
    }
    choices = parse_choices(for_eval) or parse_choices(question) or parse_choices(text)
    return {
        "id": f"mathverse-{raw['sample_index']}",
        "prompt": text,
        "images": images,
        "answer": str(raw["answer"]).strip(),
        "choices": choices if is_choice else None,
        "source": "mathverse",
        "meta": meta,
    }


def extract(row: Row, response: str) -> str | None:
    return final_answer(response)


def letter_set(text: str) -> frozenset[str] | None:
    """The option letters an answer names: one ("B", "(B)", "B: 60°") or several ("C\\nD",
    "A and C", "C, D"); None when it is not written as letters."""
    single = choice_letter(text)
    if single is not None:
        return frozenset(single)
    tokens = [t for t in _SEPARATORS.split(unwrap_latex(text).strip()) if t]
    matches = [_LETTER_TOKEN.match(t) for t in tokens]
    if len(tokens) < 2 or not all(matches):
        return None
    return frozenset(m.group(1) for m in matches if m)


def _named_choice(row: Row, text: str) -> frozenset[str] | None:
    """The letter of the option whose text ``text`` is (normalised or math-equal), else None."""
    for i, choice in enumerate(row.get("choices") or []):
        if normalise_text(choice) == normalise_text(text) or math_equal(choice, text):
            return frozenset(chr(ord("A") + i))
    return None


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    if extracted is None:
        return {"correct": False, "normalised": ""}
    answer = row["answer"]
    if not str(row["meta"].get("question_type", "")).startswith("multi"):
        return {"correct": math_equal(answer, extracted), "normalised": extracted.strip()}
    gold = letter_set(answer) or _named_choice(row, answer)
    given = letter_set(extracted) or _named_choice(row, extracted)
    if gold is None:  # option text whose choices could not be read: compare the text itself
        return {"correct": math_equal(answer, extracted), "normalised": extracted.strip()}
    return {"correct": given == gold, "normalised": "".join(sorted(given or ()))}


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
