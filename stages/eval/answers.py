"""Rule-based answer reading and comparison shared by the benchmark scorers.

Boxed answers and math-aware equality come from the score stage (the training reward's own
``last_boxed`` and ``answers_match``), so a benchmark answer is read and compared as in training.

The official evaluators of MathVista, MathVerse and MathVision first ask an LLM (GPT-4) to pull
the answer out of a free-text response, then compare it with rules. Here the first step is done
by rules too, in the order a response in our answer format is most likely to carry its answer:
the last ``\\boxed{}``, then the last ``<answer>...</answer>``, then an "answer is X" /
"Answer: X" phrase, then the whole response when it is one short line. Only when all of these
find nothing does a scorer fall back on the optional LLM judge (``judge.py``).
"""

from __future__ import annotations

import math
import re
import threading

from stages.score import answers_match, last_boxed

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_PHRASE = re.compile(
    r"\b(?:final\s+)?answers?\b(?:\s+(?:choice|option|letter))?"
    r"(?:\s+(?:is|should\s+be|would\s+be|will\s+be))?[\s*:=]*(?P<rest>[^\n]+)",
    re.I,
)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SHORT_LINE = 32
# What may follow a number that still reads as that number: a percent sign, a short unit written
# straight after it ("12cm"), or words after a space ("12 square units"). "2x" does not qualify.
_UNIT_TAIL = re.compile(
    r"\s*(?:%|(?:mm|cm|km|m|kg|g|ml|l|s)(?:\^?[23²³])?)?(?:\s+[A-Za-z][A-Za-z.^²³23]*)*\s*"
)


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair, else None."""
    found = _TAG.findall(text)
    return found[-1].strip() if found else None


def without_think(text: str) -> str:
    """The response with its ``<think>...</think>`` blocks removed (phrases inside don't count)."""
    return _THINK.sub(" ", text).strip()


def answer_phrase(text: str) -> str | None:
    """What follows the last "answer is" / "Answer:" on its line, trimmed of markdown and a full stop."""
    found = list(_PHRASE.finditer(without_think(text)))
    if not found:
        return None
    rest = re.sub(r"[\s.。]+$", "", found[-1].group("rest"))
    return rest.strip().strip("*").strip() or None


def short_response(text: str) -> str | None:
    """The whole response when it is a single short line (a bare "B" or "12"), else None."""
    body = without_think(text).strip()
    if body and "\n" not in body and len(body) <= _SHORT_LINE:
        return re.sub(r"\s*\.\s*$", "", body)
    return None


def final_answer(text: str) -> str | None:
    """The answer a response states: boxed, then answer tag, then answer phrase, then short line."""
    for reader in (last_boxed, answer_tag, answer_phrase, short_response):
        found = reader(text)
        if found:
            return found
    return None


def unwrap_latex(text: str) -> str:
    """Drop presentation-only LaTeX: ``$``, ``\\text{..}`` wrappers, ``\\left``/``\\right``, thin spaces."""
    s = text.replace("\\$", "").replace("$", "")
    previous = None
    while previous != s:
        previous = s
        s = _LATEX_WRAPPERS.sub(r"\1", s)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\quad"):
        s = s.replace(token, "")
    return s.strip()


def choice_letter(text: str | None, n_choices: int = 8) -> str | None:
    """The option letter a short answer names: "B", "(B)", "B.", "B) 32", "\\text{B}", "Option B".

    Lower-case letters count only in parentheses ("(b)"), as in MathVista's official regex, because
    a bare "a" is more often a variable than a choice.
    """
    if not text:
        return None
    s = unwrap_latex(text).strip().strip("*").strip()
    s = re.sub(r"^(?:option|choice|answer)\s*[:\s]\s*", "", s, flags=re.I)
    match = re.match(r"^\(\s*([A-Za-z])\s*\)", s) or re.match(r"^([A-Z])(?=$|[.:)\]]|\s*$)", s)
    if not match:
        return None
    letter = match.group(1).upper()
    return letter if ord(letter) - ord("A") < n_choices else None


def letters(n: int) -> list[str]:
    """Option letters for ``n`` choices: A, B, C, ..."""
    return [chr(ord("A") + i) for i in range(n)]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute all cost 1), as MathVista uses."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def plain_number(text: str | None) -> float | None:
    """A number written plainly ("12", "-3.5", "1,024", "12 cm", "x = 4", "45°", "30%"), else None.

    Needed because MathVista and MathVision cast answers with ``float()``; a stated unit or a
    thousands separator would make that fail where a human (or GPT extractor) reads the number.
    """
    if text is None:
        return None
    s = unwrap_latex(text)
    s = s.split("=")[-1].replace("\\approx", "≈").split("≈")[-1]
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "").replace("\\%", "%")
    s = s.strip().rstrip(".").strip()
    try:
        return float(s)
    except ValueError:
        pass
    numbers = _NUMBER.findall(s)
    if len(numbers) != 1:
        return None
    head, _, tail = s.partition(numbers[0])
    if not head.strip() and _UNIT_TAIL.fullmatch(tail):
        return float(numbers[0])
    return None


def number_value(text: str | None) -> float | None:
    """``plain_number``, else the value math-verify reads (``\\frac{1}{2}``, ``2\\sqrt{3}``), else None."""
    value = plain_number(text)
    if value is not None or not text:
        return value
    for parsed in _parse(text):
        try:
            number = complex(parsed.evalf()) if hasattr(parsed, "evalf") else None
        except (TypeError, ValueError, AttributeError):
            continue
        if number is not None and abs(number.imag) < 1e-12 and math.isfinite(number.real):
            return number.real
    return None


def normalise_text(text: str) -> str:
    """Case-, space- and wrapper-insensitive form for plain string comparison."""
    s = unwrap_latex(text).lower()
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def _timeout() -> int | None:
    """math-verify's timeout uses SIGALRM, which only works in the main thread."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    from math_verify import parse

    body = text.strip().strip("$").strip()
    if not body:
        return []
    return parse(f"${body}$", parsing_timeout=_timeout())


def math_equal(gold: str, pred: str | None, decimals: int | None = None) -> bool:
    """Whether ``pred`` states the same answer as ``gold``: plain string match, then the math
    reward's comparison (math-verify, ``stages.score.math_reward.answers_match``).

    With ``decimals`` (MathVision compares at 2), two answers that both evaluate to numbers,
    LaTeX included (``\\frac{1}{3}``, ``2\\sqrt{2}``, ``0.33``), are equal exactly when they
    are equal after ``round(x, decimals)``, as the official evaluators decide it.
    """
    if pred is None or not pred.strip() or not gold.strip():
        return False
    if normalise_text(gold) == normalise_text(pred):
        return True
    if decimals is not None:
        g, p = number_value(gold), number_value(pred)
        if g is not None and p is not None:
            return round(g, decimals) == round(p, decimals)
    return answers_match(pred, gold)
