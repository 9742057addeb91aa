"""Answer reading and comparison helpers, checked against plain independent formulas."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.eval.answers import (
    answer_phrase,
    choice_letter,
    edit_distance,
    final_answer,
    math_equal,
    number_value,
    plain_number,
)


def _levenshtein(a: str, b: str) -> int:
    """The textbook recursive definition (memoised), independent of the DP in ``answers``."""

    @cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


@settings(max_examples=200, deadline=None)
@given(st.text("abc ", max_size=8), st.text("abc ", max_size=8))
def test_edit_distance_matches_the_recursive_definition(a, b):
    assert edit_distance(a, b) == _levenshtein(a, b) == edit_distance(b, a)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_plain_number_reads_what_float_writes(value):
    assert plain_number(repr(value)) == value
    assert plain_number(f"{value} cm") == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,024", 1024.0),
        ("x = 4", 4.0),
        ("45^{\\circ}", 45.0),
        ("30\\%", 30.0),
        ("\\$5.50", 5.5),
        ("12cm", 12.0),
        ("3 square units", 3.0),
        ("2x", None),
        ("1 and 2", None),
        ("", None),
    ],
)
def test_plain_number_cases(text, value):
    assert plain_number(text) == value


def test_number_value_evaluates_latex():
    assert number_value("\\frac{1}{4}") == pytest.approx(0.25)
    assert number_value("2\\sqrt{3}") == pytest.approx(2 * 3**0.5)
    assert number_value("x + 1") is None


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(b)", "B"),
        ("B.", "B"),
        ("B) 32", "B"),
        ("B: 60°", "B"),
        ("\\text{B}", "B"),
        ("$\\mathrm{(D)}$", "D"),
        ("Option C", "C"),
        ("**D**", "D"),
        ("A circle", None),  # a word, not a letter
        ("b", None),  # a bare lower-case letter is a variable
        ("F", None),  # beyond five choices
    ],
)
def test_choice_letter(text, letter):
    assert choice_letter(text, n_choices=5) == letter


def test_final_answer_order_and_think_blocks():
    # the last box wins over phrases; a phrase inside <think> does not count
    assert final_answer("the answer is 3 \\boxed{4} then \\boxed{5}") == "5"
    assert final_answer("<answer>7</answer> and the answer is 8") == "7"
    assert final_answer("<think>the answer is 1</think> The final answer is: 2.") == "2"
    assert (
        final_answer("<think>the answer is 1</think> I could not finish the computation.") is None
    )
    assert final_answer("  42 ") == "42"
    assert answer_phrase("Answer: **(C)**.") == "(C)"


@pytest.mark.parametrize(
    ("gold", "pred", "decimals", "equal"),
    [
        ("2.5", "2.504", 2, True),
        ("2.5", "2.51", 2, False),
        ("2.5", "\\frac{5}{2}", 2, True),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", None, True),
        ("(-2,1]", "(-2, 1]", None, True),
        ("Yes", "yes", None, True),
        ("5", "", None, False),
        ("5", None, None, False),
    ],
)
def test_math_equal(gold, pred, decimals, equal):
    assert math_equal(gold, pred, decimals) is equal
