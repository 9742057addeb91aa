"""Reading a response: its last boxed answer and whether it follows the think-then-box format.

Both are pure string functions, cheap enough to run in the parent process; only the math-aware
comparison of an extracted answer (``math_reward.py``) needs a time limit.
"""

from __future__ import annotations

import re

# ``\boxed`` or ``\fbox`` not followed by another letter (``\boxedfoo`` is some other macro).
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")

# The format of the paper's framework (EasyR1's ``format_reward``) is a DOTALL full match of
# ``<think>.*</think>.*\\boxed\{.*\}.*``. That regex backtracks: on a degenerate response repeating
# "</think>\boxed{" it takes cubic time (25 s for 30,000 characters), so ``has_think_format``
# decides the same thing with three forward searches. Nothing is required of the think text or the
# box content (an empty think block or ``\boxed{}`` passes: accuracy judges the content, format
# only the shape).
_BOX_OPEN = re.compile(r"\\boxed\s*\{")
# What matters when matching braces: an escaped character (``\{`` is a literal brace, ``\\`` a
# line break) or a brace.
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)
# The argument of ``\boxed 5``: up to whitespace or the end of the maths.
_BARE_TOKEN = re.compile(r"[^\s$]+")


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """For each ``{`` at or after ``start``: where its group closes (absent if it never does).

    One pass, so reading the last box stays linear however many unclosed boxes a response has.
    """
    close: dict[int, int] = {}
    stack: list[int] = []
    for token in _BRACE_TOKENS.finditer(text, start):
        if token.group() == "{":
            stack.append(token.start())
        elif token.group() == "}" and stack:
            close[stack.pop()] = token.start()
    return close


def _argument_start(text: str, after: int) -> int | None:
    """Where the argument of a box macro ending at ``after`` starts (spaces skipped), or None."""
    i = after
    while i < len(text) and text[i] in " \t":
        i += 1
    if i == len(text) or (i == after and text[i] != "{"):
        return None  # ``\boxed`` at the very end, or ``\boxed5`` (not TeX)
    return i


def last_boxed(text: str) -> str | None:
    """Content (stripped) of the last complete ``\\boxed{...}`` / ``\\fbox{...}``, else None.

    Nested braces are balanced (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); ``\\{`` and ``\\}``
    are literal braces, not grouping. ``\\boxed 5`` gives ``5`` (TeX boxes the next token;
    responses mean "up to the end of the maths": up to whitespace or ``$``). A box that never
    closes (a response cut off at the length limit) is skipped and the one before it is used, so
    "last" means the last box the model finished writing. An empty ``\\boxed{}`` gives ``""``,
    which is not None: the model did answer, with nothing.
    """
    starts = [_argument_start(text, m.end()) for m in _BOX.finditer(text)]
    braced = [i for i in starts if i is not None and text[i] == "{"]
    close = _closing_braces(text, braced[0]) if braced else {}
    for i in reversed(starts):
        if i is None:
            continue
        if text[i] != "{":
            token = _BARE_TOKEN.match(text, i)
            if token:
                return token.group(0)
        elif i in close:
            return text[i + 1 : close[i]].strip()
    return None


def has_think_format(text: str) -> bool:
    """True when ``text`` is ``<think>...</think>`` followed (anywhere after) by ``\\boxed{...}``.

    The same decision as the paper's framework (a DOTALL full match of
    ``<think>.*</think>.*\\boxed{.*}.*``) on the stripped text, with ``\\boxed {`` (a space) also
    accepted: the text opens with ``<think>``, some ``</think>`` follows, a ``\\boxed{`` follows
    that and a ``}`` follows the box's ``{``. Tags are case-sensitive and contain no spaces; text
    between ``</think>`` and the box (a short summary) is allowed, as it is there.
    """
    text = text.strip()
    if not text.startswith("<think>"):
        return False
    end_think = text.find("</think>", len("<think>"))
    if end_think < 0:
        return False
    box = _BOX_OPEN.search(text, end_think + len("</think>"))
    return box is not None and text.rfind("}") >= box.end()
