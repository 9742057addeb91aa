"""Reward functions by name: built-in registry, loading ``FILE.py:FN``, checking their results.

A reward function is called once per item as

    fn(response: str, answer: str, **fields, **options) -> float | dict

where ``fields`` are the item's other keys (``prompt_id``, ``sample``, ``choices``, ``prompt``
(the user text the policy saw), ``meta``, and whatever else the caller put in the item) and ``options`` the reward options of the run (for ``math``:
``format_weight``). A custom function should therefore end its parameters with ``**kwargs``.
It returns either the reward as a number, or a dict with a numeric ``reward`` key plus other
numeric components (e.g. ``format``, ``accuracy``) and optionally ``extracted``, a string naming
the answer it read. Every item of one run must give the same component names. A NaN or infinite
value does not stop the run: the item scores 0 (every component 0) and is counted as
``non_finite``, as an item past its time limit is counted as ``timed_out``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stages.errors import MgpoError
from stages.score.last_number import last_number_reward
from stages.score.short_answer import short_answer_reward

RewardFn = Callable[..., Any]

# Keys a score row has besides the components: a reward function may not return them.
RESERVED = ("prompt_id", "sample", "timed_out", "non_finite")


def _math(
    response: str,
    answer: str,
    *,
    choices: list[str] | None = None,
    prompt: str | None = None,
    format_weight: float = 0.1,
    **_fields: Any,
) -> dict[str, float | str]:
    """The ``math`` reward called with a whole item (fields it does not use are ignored).

    A letter answer counts for a choice only when ``prompt`` showed the lettered choices
    (``shown_choices``). math-verify (and SymPy) are imported here, in the scoring workers, not in
    the parent."""
    from stages.score.math_reward import math_reward, shown_choices

    return math_reward(
        response, answer, shown_choices(prompt, choices), format_weight=format_weight
    )


# name -> (function, the component names it returns besides ``reward``).
BUILTIN_REWARDS: dict[str, tuple[RewardFn, tuple[str, ...]]] = {
    "math": (_math, ("format", "accuracy")),
    "short_answer": (short_answer_reward, ("format", "accuracy")),
    "last_number": (last_number_reward, ("format", "accuracy")),
}
# Built-ins that cannot hang: a few linear-time regular expressions over the response and exact
# string or decimal comparison, no symbolic maths. They are scored in the calling process (no
# worker, no time limit), as other trainers score; ``math`` and custom rewards get workers.
BOUNDED_REWARDS = frozenset({"short_answer", "last_number"})


def split_spec(spec: str) -> tuple[Path, str] | None:
    """``(file, function)`` of a ``FILE.py:FN`` spec, None for a built-in name.

    Raises MgpoError for an unknown built-in, a malformed spec or a missing file: everything that
    can be checked without running the user's code.
    """
    if spec in BUILTIN_REWARDS:
        return None
    path_text, sep, fn_name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not fn_name.isidentifier():
        known = ", ".join(sorted(BUILTIN_REWARDS))
        raise MgpoError(
            f"--reward {spec!r}: expected a built-in name ({known}) or FILE.py:FUNCTION"
        )
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise MgpoError(f"--reward {spec!r}: reward file {path} does not exist")
    return path, fn_name


def load_reward_fn(spec: str) -> RewardFn:
    """The function a spec names. A file is imported by path (its folder goes on ``sys.path`` so
    it can import its neighbours); import errors and a missing function raise MgpoError."""
    where = split_spec(spec)
    if where is None:
        return BUILTIN_REWARDS[spec][0]
    path, fn_name = where
    module_name = "mgpo_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise MgpoError(f"--reward {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise MgpoError(
                f"--reward {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise MgpoError(f"--reward {spec!r}: {path} has no function {fn_name!r}")
    return fn


def builtin_components(spec: str) -> tuple[str, ...] | None:
    """Component names a built-in reward returns; None for a custom one (known only once it ran)."""
    entry = BUILTIN_REWARDS.get(spec)
    return None if entry is None else entry[1]


def _number(name: str, value: Any) -> float:
    if isinstance(value, numbers.Real):  # bool, int, float, numpy scalars; NaN stays NaN here
        return float(value)
    raise TypeError(f"{name} is a {type(value).__name__}, not a number")


def zero_if_not_finite(row: dict[str, float | str]) -> tuple[dict[str, float | str], bool]:
    """``row`` with every number 0.0 if any of them is NaN or infinite, and whether it was."""
    numbers_ = [v for k, v in row.items() if k != "extracted"]
    if all(math.isfinite(v) for v in numbers_):  # type: ignore[arg-type]
        return row, False
    return {k: (v if k == "extracted" else 0.0) for k, v in row.items()}, True


def check_result(result: Any) -> dict[str, float | str]:
    """A reward function's return value as ``{"reward", <components>, "extracted"}``.

    Raises TypeError / ValueError (the caller names the item and function) for anything that is
    not a number or a dict of numbers with a ``reward`` key. A NaN or infinite value zeroes every
    number of the row and adds ``non_finite: True`` (the runner counts and removes it).
    """
    if not isinstance(result, Mapping):
        return {"reward": _number("the returned value", result), "extracted": ""}
    if "reward" not in result:
        raise ValueError(
            f"returned a dict without a 'reward' key (keys: {sorted(map(str, result))})"
        )
    row: dict[str, float | str] = {}
    for key, value in result.items():
        if not isinstance(key, str) or key in RESERVED:
            raise ValueError(f"returned the key {key!r}, which a reward function may not return")
        if key == "extracted":
            if not isinstance(value, str):
                raise TypeError(f"'extracted' is a {type(value).__name__}, not a string")
            row[key] = value
        else:
            row[key] = _number(repr(key), value)
    row.setdefault("extracted", "")
    row, bad = zero_if_not_finite(row)
    return {**row, "non_finite": True} if bad else row
