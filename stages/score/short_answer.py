"""The ``short_answer`` reward: for tasks whose answer is one word or number (the built-in
``shapes`` task).

The answer read is the last ``\\boxed{}`` if the response has one, else its first word (the first
run of letters and digits). Accuracy is a case-insensitive exact match, so ``"red."`` and
``"Red"`` count for ``red`` but ``"reddish"`` and ``"12"`` (for ``1``) do not. Format rewards a
well-formed answer: one of the offered ``choices`` when the item has them, else a response that
is one word and nothing else. (Crediting any word would let a policy collapse onto one word;
crediting a valid option teaches the answer space while the correct option still pays 10x more.)
"""

from __future__ import annotations

import re
from typing import Any

from stages.score.extract import last_boxed

_WORD = re.compile(r"[A-Za-z0-9]+(?:\.[0-9]+)?")


def first_word(text: str) -> str:
    match = _WORD.search(text)
    return match.group(0) if match else ""


def short_answer_reward(
    response: str,
    answer: str,
    *,
    choices: list[str] | None = None,
    format_weight: float = 0.1,
    **_fields: Any,
) -> dict[str, Any]:
    boxed = last_boxed(response)
    extracted = (boxed if boxed is not None else first_word(response)).strip()
    accuracy = float(extracted.lower() == answer.strip().lower())
    if choices:
        clean = float(extracted.lower() in {c.strip().lower() for c in choices})
    else:
        clean = (
            float(bool(_WORD.fullmatch(response.strip().rstrip(".")))) if response.strip() else 0.0
        )
    reward = (1.0 - format_weight) * accuracy + format_weight * clean
    return {"reward": reward, "format": clean, "accuracy": accuracy, "extracted": extracted}
