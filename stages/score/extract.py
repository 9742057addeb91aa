"""Reading a response: its last boxed answer and whether it follows the think-then-box format.

Both are pure string functions, cheap enough to run in the parent process; only the math-aware
comparison of an extracted answer (``math_reward.py``) needs a time limit.
"""

from __future__ import annotations

import re

# ``\boxed`` or ``\fbox`` not followed by another letter (``\boxedfoo`` is some other macro).
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")

# The format of the paper's framework (EasyR1's ``format_reward``): the response, after leading
# whitespace, opens with ``<think>``, closes a ``</think>`` somewhere, and has a ``\boxed{...}``
# after that. ``.`` spans newlines. Nothing is required of the think text or the box content (an
# empty think block or ``\boxed{}`` passes: accuracy judges the content, format only the shape).
_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\s*\{.*\}.*", re.DOTALL)


def _braced(text: str, open_at: int) -> str | None:
    """Content of the group whose ``{`` is at ``open_at``, or None when it never closes.

    ``\\{`` and ``\\}`` are literal braces in LaTeX (set notation), not grouping, so they are
    skipped when counting depth.
    """
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped character (``\{``, ``\}``, ``\\``) never opens or closes a group
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def _box_content(text: str, after: int) -> str | None:
    """The argument of a box macro that ends at ``after``: ``{...}`` or one bare token."""
    i = after
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        inner = _braced(text, i)
        return None if inner is None else inner.strip()
    if i == after:
        return None  # ``\boxed5`` is not TeX; ``\boxed`` at the very end has no argument
    # ``\boxed 5``: TeX boxes the next token; responses mean "up to the end of the maths".
    token = re.match(r"[^\s$]+", text[i:])
    return token.group(0) if token else None


def last_boxed(text: str) -> str | None:
    """Content (stripped) of the last complete ``\\boxed{...}`` / ``\\fbox{...}``, else None.

    Nested braces are balanced (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); ``\\boxed 5``
    gives ``5``. A box that never closes (a response cut off at the length limit) is skipped and
    the one before it is used, so "last" means the last box the model finished writing. An empty
    ``\\boxed{}`` gives ``""``, which is not None: the model did answer, with nothing.
    """
    for match in reversed(list(_BOX.finditer(text))):
        content = _box_content(text, match.end())
        if content is not None:
            return content
    return None


def has_think_format(text: str) -> bool:
    """True when ``text`` is ``<think>...</think>`` followed (anywhere after) by ``\\boxed{...}``.

    Same strictness as the paper's framework (a DOTALL full match of
    ``<think>.*</think>.*\\boxed{.*}.*``), except that leading and trailing whitespace is allowed,
    and ``\\boxed {`` with a space is accepted. Tags are case-sensitive and must not contain spaces.
    Text between ``</think>`` and the box (a short summary) is allowed, as it is there.
    """
    return _FORMAT.fullmatch(text.strip()) is not None
