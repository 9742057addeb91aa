"""The built-in ``math`` reward: 0.9 accuracy + 0.1 format, as in the paper's framework.

Accuracy compares the last boxed answer with the reference by math-verify (parse both to SymPy,
then its numeric / symbolic / set comparison), after a light clean-up of what math-verify leaves
alone (trailing units with an exponent, choice letters). No hand-written symbolic maths here.

math-verify's own time limits use ``signal.alarm``, which works only in a process's main thread
and would fire inside whatever else the process does; they are turned off
(``parsing_timeout=None``, ``timeout_seconds=None``). Nothing in this module is time-bounded:
callers that need a limit (every stage does) go through ``runner.score_items``, which runs each
item in a worker process it kills when the item overruns.

Where this differs from the paper's grader (mathruler's ``grade_answer``), in both directions:
- a decimal reference matches an *exact* answer that rounds to it at the reference's number of
  decimals (reference ``6.28``, answer ``2\\pi``); the other way round, a decimal answer matches an
  exact reference only when equal to it at math-verify's 6 decimal places (``4.5`` is
  ``\\frac{9}{2}`` and ``3.464102`` is ``2\\sqrt{3}``, but ``3.46`` is not), and two decimals
  must be equal (``6.3`` is not ``6.28``);
- ``x = 5`` matches ``5`` (math-verify takes the right-hand side of an assignment);
- with ``choices``, a letter answer and the text of the choice it names are interchangeable.

A letter may stand for a choice only when the prompt showed which letter means what: the
``math`` reward passes ``shown_choices(prompt, choices)``, which keeps the choices only when the
prompt lists every one of them behind its letter ("(A) 48", "A. 48", "B: 52"). Geometry3K's hub
rows carry ``choices`` that the default template never shows; without this rule ``\\boxed{B}``
would earn the reward for gold ``48`` about a quarter of the time, by chance.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

from stages.score.extract import has_think_format, last_boxed

# math-verify (and SymPy under it) is imported on first use, not with this module: the trainer
# imports the score stage, and a training machine need not have math-verify unless it scores
# with the math reward. It warns once per process that its timeouts are off; that is deliberate.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_UNIT_WORDS = (
    r"(?:square\s+|sq\.?\s*)?(?:units?|mm|cm|km|m|in|inch(?:es)?|ft|feet|foot|yd|yards?|miles?"
    r"|(?:milli|centi|kilo)?met(?:er|re)s?|degrees?|deg)"
)
# A unit at the end, after a number or a closing brace: ``84 cm^2``, ``84\,\text{cm}``, ``84°``.
_UNIT_TAIL = re.compile(
    r"(?<=[\d}.\s])\s*(?:\\[,;:! ]|~)*\s*"
    r"(?:\\(?:text|mathrm|textrm|mbox)\s*\{[\s~]*[A-Za-z][A-Za-z .]*\}"
    rf"|{_UNIT_WORDS}\b)"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$"
)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b")
_WRAPPED = re.compile(r"^\\(?:text|mathrm|textrm|mbox|textbf|mathbf)\s*\{([^{}]*)\}$")
# A choice letter: ``B``, ``(B)``, ``B.``, ``B)``, or a letter and its text: ``B. 2\sqrt{3}``.
_LETTER = re.compile(r"^\(?([A-Z])\)?[.:]?$|^\(?([A-Z])[.):]\s+\S.*$", re.DOTALL)
_DECIMAL = re.compile(r"^-?\d*\.(\d+)$")


def clean_answer(text: str) -> str:
    """``text`` without what never changes a geometry answer's value: ``$``, ``\\left``/``\\right``,
    ``\\dfrac``/``\\tfrac`` spelling, degree signs, trailing units and a final full stop."""
    s = text.strip().strip("$").strip()
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREES.sub("", s)
    for _ in range(2):  # "84 \text{cm}^2." needs the full stop off before the unit goes
        s = s.strip().rstrip(".").strip()
        s = _UNIT_TAIL.sub("", s).strip()
    wrapped = _WRAPPED.match(s)
    if wrapped:
        s = wrapped.group(1).strip()
    return s


def _compact(text: str) -> str:
    """A cleaned answer with all whitespace and spacing macros removed, for string comparison."""
    return re.sub(r"\s+|\\[,;:! ]|~", "", clean_answer(text))


def _parsed(text: str) -> list:
    """math-verify's parse of one bare answer (it expects LaTeX in ``$...$``), no time limit."""
    from math_verify import parse

    return parse(f"${clean_answer(text)}$", parsing_timeout=None)


def _rounds_to(gold_text: str, gold: list, pred: list) -> bool:
    """True when the reference is a decimal and the answer an exact number that rounds to it."""
    digits = _DECIMAL.match(_compact(gold_text))
    if not digits or not gold or not pred:
        return False
    from sympy import Basic, Float

    exact = pred[0]
    if not isinstance(exact, Basic) or not exact.is_number or exact.atoms(Float):
        return False
    try:
        value = complex(exact.evalf(30))
    except (TypeError, ValueError):
        return False
    reference = float(_compact(gold_text))
    if value.imag != 0 or not math.isfinite(value.real):
        return False
    # ``reference`` is ``value`` rounded to ``d`` decimals  <=>  |value - reference| <= half a unit.
    return abs(value.real - reference) <= 0.5 * 10 ** -len(digits.group(1)) + 1e-12


def answers_match(pred: str, gold: str) -> bool:
    """Math-aware equality of an extracted answer and a reference answer (both LaTeX strings)."""
    if not pred.strip() or not gold.strip():
        return False
    if _compact(pred) == _compact(gold):
        return True
    gold_parsed = _parsed(gold)
    pred_parsed = _parsed(pred)
    if not gold_parsed or not pred_parsed:
        return False
    from math_verify import verify

    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    return _rounds_to(gold, gold_parsed, pred_parsed)


def shown_choices(prompt: str | None, choices: Sequence[str] | None) -> list[str] | None:
    """``choices`` when ``prompt`` lists each one after its letter, in order ("(A) 48",
    "A. 48", "A: 48", "A) 48"), else None: only then can a letter answer name a choice."""
    if not prompt or not choices:
        return None
    for i, choice in enumerate(choices):
        letter = chr(ord("A") + i)
        shown = re.compile(
            rf"(?:^|[\s(\[]){letter}(?:\)|[.:：]|\s)\s*{re.escape(str(choice).strip())}"
            r"(?=$|[\s,;.)\]])",
            re.M,
        )
        if not shown.search(prompt):
            return None
    return [str(c) for c in choices]


def choice_index(text: str, n_choices: int) -> int | None:
    """0-based index of the choice that ``text`` names by letter (``B``, ``(B)``, ``B. ...``)."""
    found = _LETTER.match(clean_answer(text))
    if not found:
        return None
    index = ord(found.group(1) or found.group(2)) - ord("A")
    return index if index < n_choices else None


def _gold_index(answer: str, choices: Sequence[str]) -> int | None:
    """Which choice the reference is: by its letter, else by a choice equal to it."""
    named = choice_index(answer, len(choices))
    if named is not None:
        return named
    compact = _compact(answer)
    for i, choice in enumerate(choices):
        if _compact(choice) == compact:
            return i
    for i, choice in enumerate(choices):
        if answers_match(choice, answer):
            return i
    return None


def is_correct(extracted: str, answer: str, choices: Sequence[str] | None = None) -> bool:
    """Accuracy of one extracted answer, letting a choice letter stand for its text and back."""
    if not choices:
        return answers_match(extracted, answer)
    picked = choice_index(extracted, len(choices))
    gold = _gold_index(answer, choices)
    if picked is not None:
        if gold is not None:
            return picked == gold
        return answers_match(choices[picked], answer)
    if answers_match(extracted, answer):
        return True
    return gold is not None and answers_match(extracted, choices[gold])


def math_reward(
    response: str,
    answer: str,
    choices: Sequence[str] | None = None,
    *,
    format_weight: float = 0.1,
) -> dict[str, float | str]:
    """``{"reward", "format", "accuracy", "extracted"}`` of one response.

    reward = (1 - format_weight) * accuracy + format_weight * format; both parts are 0 or 1.
    ``extracted`` is the last boxed answer, ``""`` when there is none (accuracy is then 0: no
    fallback to "the answer is ..." phrases, as in the paper's framework).
    """
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    extracted = last_boxed(response)
    accuracy = float(extracted is not None and is_correct(extracted, answer, choices))
    fmt = float(has_think_format(response))
    return {
        "reward": (1.0 - format_weight) * accuracy + format_weight * fmt,
        "format": fmt,
        "accuracy": accuracy,
        "extracted": extracted or "",
    }
