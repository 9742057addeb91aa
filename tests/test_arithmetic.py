"""The built-in ``arithmetic`` task (generator, splits, prompt shards) and the ``last_number``
reward that scores it."""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.errors import MgpoError
from stages.prepare import PrepareOptions, run_prepare
from stages.prepare.arithmetic import DIFFICULTIES, Num, Op, evaluate, generate, render, split_of
from stages.score.last_number import last_number, last_number_reward
from stages.shards import open_shards

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def plain_value(text: str) -> int:
    """An independent evaluation: Python's own parser of the rendered expression."""
    assert re.fullmatch(r"[0-9+\-* ()]+", text), text

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        return node.value

    return walk(ast.parse(text, mode="eval").body)


def items(split: str, difficulty: str, size: int = 64, seed: int = 0) -> list[dict]:
    return list(generate(split, size=size, difficulty=difficulty, seed=seed))


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_answers_are_the_exact_values_of_the_expressions(difficulty: str) -> None:
    for item in items("train", difficulty, 200):
        expression = item["meta"]["expression"]
        assert item["problem"] == f"Compute {expression}."
        assert item["answer"] == str(plain_value(expression))
        assert item["images"] == [] and "<image>" not in item["problem"]


def test_difficulty_is_the_number_of_steps() -> None:
    steps = {
        d: {item["meta"]["expression"].count(" ") // 2 for item in items("train", d)}
        for d in DIFFICULTIES
    }
    assert steps == {"easy": {1}, "medium": {2}, "hard": {3}}
    assert all("(" in item["meta"]["expression"] for item in items("test", "hard"))


def test_same_seed_same_items_other_seed_other_items() -> None:
    assert items("train", "medium") == items("train", "medium")
    assert items("train", "medium") != items("train", "medium", seed=1)
    # a longer split starts with the shorter one: --size only adds items
    assert items("train", "easy", 128)[:64] == items("train", "easy", 64)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_held_out_splits_never_repeat_a_training_expression(difficulty: str) -> None:
    seen = {}
    for split, size in (("train", 512), ("validation", 64), ("test", 128)):
        expressions = [item["meta"]["expression"] for item in items(split, difficulty, size)]
        assert len(set(expressions)) == size
        assert all(split_of(e) == split for e in expressions)
        seen[split] = set(expressions)
    assert not seen["train"] & seen["validation"]
    assert not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]
    # other seeds draw other items but from the same per-split partition
    assert all(
        split_of(i["meta"]["expression"]) == "test" for i in items("test", difficulty, 32, 7)
    )


def test_a_size_beyond_the_expression_space_is_one_clear_error() -> None:
    with pytest.raises(MgpoError, match="--size 400 is too large"):
        items("test", "easy", 400)


def test_a_difficulty_of_another_task_is_one_clear_error(tmp_path: Path) -> None:
    from helpers import assert_user_error, run_main

    result = run_main("prepare", "arithmetic", "--difficulty", "colour", "--out", tmp_path / "x")
    assert_user_error(result, "--difficulty colour: arithmetic has easy, medium, hard")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_rendering_keeps_the_value_of_any_tree(data) -> None:
    """Any tree (right-nested differences, products of sums...) renders to text of its value."""

    def node(depth: int):
        if depth == 0 or data.draw(st.booleans()):
            return Num(data.draw(st.integers(0, 99)))
        return Op(data.draw(st.sampled_from("+-*")), node(depth - 1), node(depth - 1))

    expr = node(4)
    assert plain_value(render(expr)) == evaluate(expr)


def test_only_needed_parentheses() -> None:
    assert render(Op("-", Num(9), Op("-", Num(5), Num(2)))) == "9 - (5 - 2)"
    assert render(Op("-", Op("-", Num(9), Num(5)), Num(2))) == "9 - 5 - 2"
    assert render(Op("*", Op("+", Num(1), Num(2)), Num(3))) == "(1 + 2) * 3"
    assert render(Op("+", Num(1), Op("*", Num(2), Num(3)))) == "1 + 2 * 3"


def test_prepare_writes_text_only_prompt_shards(tmp_path: Path) -> None:
    out = run_prepare(
        PrepareOptions(name="arithmetic", split="validation", size=8, out=str(tmp_path / "v"))
    )
    rows = list(open_shards(out, "prompts").iter_rows())
    assert len(rows) == 8
    for row, item in zip(rows, items("validation", "easy", 8), strict=True):
        assert row["images"] == []
        assert row["prompt"] == f"{item['problem']} Reply with only the final number."
        assert row["answer"] == item["answer"] and row["source"] == "arithmetic"
        assert json.loads(row["meta"])["expression"] == item["meta"]["expression"]


@pytest.mark.parametrize(
    ("response", "answer", "accuracy", "format_", "extracted"),
    [
        ("15", "15", 1.0, 1.0, "15"),
        ("15.", "15", 1.0, 1.0, "15"),
        ("8 + 7 = 15", "15", 1.0, 0.0, "15"),
        ("The answer is -83.", "-83", 1.0, 0.0, "-83"),
        ("12-4=8", "8", 1.0, 0.0, "8"),  # the minus of 12-4 is an operator, not a sign
        ("-4", "-4", 1.0, 1.0, "-4"),
        ("\\boxed{15} because 8 + 7 = 16", "15", 1.0, 0.0, "15"),  # a box wins over later text
        ("\\boxed{-3}", "-3", 1.0, 1.0, "-3"),
        ("15.0", "15", 1.0, 1.0, "15.0"),
        ("The answer is 151.", "15", 0.0, 0.0, "151"),
        ("To compute 8 + 7, we add them.", "15", 0.0, 0.0, "7"),
        ("no number at all", "15", 0.0, 0.0, ""),
        ("", "15", 0.0, 0.0, ""),
    ],
)
def test_last_number_reward(response, answer, accuracy, format_, extracted) -> None:
    result = last_number_reward(response, answer)
    assert result == {
        "reward": pytest.approx(0.9 * accuracy + 0.1 * format_),
        "format": format_,
        "accuracy": accuracy,
        "extracted": extracted,
    }
    assert last_number(response) == extracted
    assert last_number_reward(response, answer, format_weight=0.0)["reward"] == accuracy


def test_last_number_reward_runs_through_the_score_stage(tmp_path: Path) -> None:
    """As ``--reward FILE.py:last_number_reward`` (the name the lead may register later)."""
    from stages.score import last_number as module
    from stages.score.rewards import check_result, load_reward_fn

    fn = load_reward_fn(f"{module.__file__}:last_number_reward")
    assert check_result(fn("7 + 8 = 15", "15", prompt_id="p", sample=0))["accuracy"] == 1.0
