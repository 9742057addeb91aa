"""The ``last_number`` reward: for tasks whose answer is one exact number (built-in ``arithmetic``).

Small instruct models rarely answer with the bare number even when asked; they write
``8 + 7 = 15`` or ``The answer is 15.``. So the answer read is the last number of the response
(of its last ``\\boxed{}`` when it has one), and it counts when it equals the reference as a
decimal number (``15``, ``15.0`` and ``+15`` all equal ``15``). A minus sign belongs to a number
only when it does not follow a word character or ``)`` (``12-4`` reads ``4``, ``is -4`` reads
``-4``). Format rewards doing what the prompt asks, a response that is just the number (a final
full stop allowed), so the policy can learn to stop talking; accuracy pays 9x more by default.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from stages.score.extract import last_boxed

NUMBER = re.compile(r"(?:(?<![\w)])[-+])?\d+(?:\.\d+)?")
# No whitespace runs around the group: "\\s*([^{}]*?)\\s*" backtracks cubically on a long run of
# spaces without a closing brace (2,000 spaces took 19 s); the group is stripped instead.
_BOXED_ONLY = re.compile(r"\\boxed\s*\{([^{}]*)\}")


def last_number(text: str) -> str:
    """The last number in ``text`` (in its last ``\\boxed{}`` if any), or ``""``."""
    boxed = last_boxed(text)
    found = NUMBER.findall(boxed if boxed is not None else text)
    return found[-1] if found else ""


def same_number(a: str, b: str) -> bool:
    try:
        return Decimal(a.strip()) == Decimal(b.strip())
    except InvalidOperation:
        return False


def is_bare_number(response: str) -> bool:
    """The response is one number (or one boxed number) and nothing else."""
    text = response.strip().removesuffix(".").strip()
    boxed = _BOXED_ONLY.fullmatch(text)
    return bool(NUMBER.fullmatch(boxed.group(1).strip() if boxed else text))


def last_number_reward(
    response: str, answer: str, *, format_weight: float = 0.1, **_fields: Any
) -> dict[str, Any]:
    extracted = last_number(response)
    accuracy = float(bool(extracted) and same_number(extracted, answer))
    clean = float(is_bare_number(response))
    reward = (1.0 - format_weight) * accuracy + format_weight * clean
    return {"reward": reward, "format": clean, "accuracy": accuracy, "extracted": extracted}
