"""The score stage's reward functions: extraction, format, math-aware accuracy, the worker pool.

Real math-verify and real worker processes throughout. Worker-pool tests that wait on a time
limit use limits of about a second; a SIGALRM guard turns a hang (the bug they look for) into a
failure instead of a stalled suite. No test asserts how fast anything is.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stages.errors import MgpoError
from stages.score import runner
from stages.score.extract import has_think_format, last_boxed
from stages.score.math_reward import clean_answer, is_correct, math_reward, shown_choices
from stages.score.rewards import BUILTIN_REWARDS
from stages.score.runner import ScorePool, score_items, summarize

# Geometry3K-style choice list: answers in the data set are values; some sets give letters.
CHOICES = ["3", "2\\sqrt{3}", "6", "9"]
PATHOLOGICAL = "9^{9^{9}}"  # SymPy evaluates the power tower: hangs for ever
GUARD_S = 90  # a hang fails the test after this long instead of stalling the suite


@pytest.fixture
def hang_guard():
    """Fail (not hang) if the code under test stalls: the bug the time-limit tests look for."""

    def on_alarm(signum, frame):
        raise AssertionError(f"scoring stalled for {GUARD_S} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(GUARD_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{5}", "5"),
        ("\\boxed{ 5 }", "5"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{{a}{b{c}}}", "{a}{b{c}}"),
        ("first \\boxed{3} then \\boxed{4}", "4"),
        ("\\boxed{3} and finally \\fbox{7}", "7"),
        ("\\fbox{7} and finally \\boxed{3}", "3"),
        ("the answer is $\\boxed 5$.", "5"),
        ("\\boxed {12}", "12"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not grouping
        ("\\boxed{x} but cut off \\boxed{\\frac{1}{", "x"),  # unclosed last box: use the one before
        ("\\boxed{}", ""),
        ("no box at all", None),
        ("", None),
        ("\\boxed", None),
        ("\\boxedsomething{3}", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


_BALANCED = st.recursive(
    st.text(alphabet="ab12+-^ ", max_size=4),
    lambda inner: st.lists(inner, max_size=3).map(lambda parts: "{" + "".join(parts) + "}"),
    max_leaves=10,
)


@given(
    prefix=st.text(alphabet="xyz 1{}$\\", max_size=20),
    body=st.lists(_BALANCED, max_size=4).map("".join),
    suffix=st.text(alphabet="xyz 1{}$.", max_size=20),
)
def test_last_boxed_reads_any_balanced_content_after_any_prefix(prefix, body, suffix):
    # Invariant: whatever came before, and whatever box-free text follows, the last box's
    # balanced content comes back exactly (stripped).
    assert last_boxed(prefix + "\\boxed{" + body + "}" + suffix) == body.strip()


def _last_boxed_by_rescanning(text: str) -> str | None:
    """Plain reference: try every box from the last, counting brace depth from its ``{``."""
    starts = [i for i in range(len(text)) if text.startswith(("\\boxed", "\\fbox"), i)]
    for start in reversed(starts):
        j = start + (6 if text.startswith("\\boxed", start) else 5)
        if j < len(text) and text[j].isalpha():
            continue
        k = j
        while k < len(text) and text[k] in " \t":
            k += 1
        if k < len(text) and text[k] == "{":
            depth, m = 0, k
            while m < len(text):
                if text[m] == "\\":
                    m += 2
                    continue
                depth += {"{": 1, "}": -1}.get(text[m], 0)
                if depth == 0:
                    return text[k + 1 : m].strip()
                m += 1
        elif k > j and k < len(text):
            token = "".join(itertools.takewhile(lambda c: not c.isspace() and c != "$", text[k:]))
            if token:
                return token
    return None


_PIECES = [
    "\\boxed",
    "\\fbox",
    "{",
    "}",
    "\\{",
    "\\}",
    "\\\\",
    " ",
    "x",
    "1",
    "$",
    "<think>",
    "</think>",
    "\n",
]


@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_last_boxed_agrees_with_rescanning_every_box(text):
    assert last_boxed(text) == _last_boxed_by_rescanning(text)


@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_has_think_format_agrees_with_the_frameworks_regex(text):
    # The paper's framework's pattern, plus the optional space before the box's brace.
    pattern = re.compile(r"<think>.*</think>.*\\boxed\s*\{.*\}.*", re.DOTALL)
    assert has_think_format(text) is (pattern.fullmatch(text.strip()) is not None)


def test_degenerate_responses_are_read_in_linear_time(hang_guard):
    # The backtracking regex needs about 25 s for 30,000 characters of this and grows as the
    # cube; 600,000 characters would stall the guard. No speed is asserted, only completion.
    text = "<think>" + "</think>\\boxed{" * 40_000
    assert has_think_format(text) is False
    assert last_boxed(text) is None
    assert last_boxed(text + "}}") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>a</think>\\boxed{1}", True),
        ("<think>\nline\nline\n</think>\nThe answer is $\\boxed{1}$.\n", True),
        ("  <think>a</think> \\boxed{1}  ", True),
        ("<think></think>\\boxed{}", True),  # shape only; accuracy judges content
        ("<think>a</think> answer 1", False),  # no box
        ("\\boxed{1}", False),  # no think block
        ("Sure! <think>a</think>\\boxed{1}", False),  # think must open the response
        ("<think>\\boxed{1}</think> so 1", False),  # the box must come after </think>
        ("<think>a \\boxed{1}", False),  # think never closed
        ("<THINK>a</THINK>\\boxed{1}", False),  # tags are case-sensitive
        ("", False),
    ],
)
def test_has_think_format(text, expected):
    assert has_think_format(text) is expected


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    ("extracted", "answer", "correct"),
    [
        # \frac
        ("\\frac{40}{3}", "\\frac{40}{3}", True),
        ("\\dfrac{40}{3}", "\\frac{40}{3}", True),
        ("40/3", "\\frac{40}{3}", True),
        ("\\frac{80}{6}", "\\frac{40}{3}", True),
        ("13.33", "\\frac{40}{3}", False),  # an approximation is not the exact answer
        ("\\frac{3}{40}", "\\frac{40}{3}", False),
        ("4.5", "\\frac{9}{2}", True),
        ("\\frac{9}{2}", "4.5", True),
        # \sqrt
        ("2\\sqrt{3}", "2\\sqrt{3}", True),
        ("\\sqrt{12}", "2\\sqrt{3}", True),
        ("2 \\sqrt 3", "2\\sqrt{3}", True),
        ("3\\sqrt{2}", "2\\sqrt{3}", False),
        ("3.46", "2\\sqrt{3}", False),
        ("3.464102", "2\\sqrt{3}", True),  # math-verify compares at 6 decimals
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True),
        ("\\sqrt{3}/2", "\\frac{\\sqrt{3}}{2}", True),
        # decimal reference, exact answer that rounds to it
        ("2\\pi", "6.28", True),
        ("2\\pi", "6.29", False),
        ("6.3", "6.28", False),
        ("\\frac{40}{3}", "13.33", True),
        # degrees
        ("84^\\circ", "84", True),
        ("84^{\\circ}", "84", True),
        ("84°", "84", True),
        ("84 degrees", "84", True),
        ("84\\degree", "84", True),
        ("\\angle ABC = 84^\\circ", "84", True),
        ("85^\\circ", "84", False),
        # units
        ("84 \\text{cm}", "84", True),
        ("84\\,\\text{cm}", "84", True),
        ("84 \\mathrm{cm}^2", "84", True),
        ("24 m^2", "24", True),
        ("84 \\text{ square units}", "84", True),
        ("\\frac{40}{3} \\text{ in}", "\\frac{40}{3}", True),
        ("8", "8 \\text{ cm}", True),
        ("84 cm", "48", False),
        # plain numbers and forms
        ("84", "84", True),
        ("84.0", "84", True),
        ("x = 84", "84", True),
        ("1,000", "1000", True),
        ("84.", "84", True),
        ("$84$", "84", True),
        ("5", "3", False),
        ("-3", "3", False),
        # text answers
        ("\\text{isosceles}", "isosceles", True),
        ("scalene", "isosceles", False),
        # nothing
        ("", "3", False),
        ("  ", "3", False),
    ],
)
def test_is_correct_without_choices(extracted, answer, correct):
    assert is_correct(extracted, answer) is correct


@pytest.mark.parametrize(
    ("extracted", "answer", "correct"),
    [
        ("B", "2\\sqrt{3}", True),  # letter -> the choice text
        ("(B)", "2\\sqrt{3}", True),
        ("\\text{B}", "2\\sqrt{3}", True),
        ("B. 2\\sqrt{3}", "2\\sqrt{3}", True),
        ("C", "2\\sqrt{3}", False),
        ("2\\sqrt{3}", "B", True),  # text -> the letter the reference names
        ("\\sqrt{12}", "B", True),  # math-equal to the named choice
        ("6", "B", False),
        ("B", "B", True),
        ("D", "B", False),
        ("B", "\\sqrt{12}", True),  # reference equal to a choice in another form
        ("E", "9", False),  # out of range: not a choice letter, and not 9
        ("9", "9", True),
    ],
)
def test_is_correct_with_choices(extracted, answer, correct):
    assert is_correct(extracted, answer, CHOICES) is correct


@pytest.mark.parametrize(
    ("prompt", "shown"),
    [
        ("Find x.\nChoices:\n(A) 48\n(B) 52\n(C) 60\n(D) 24 Answer in \\boxed{}.", True),
        ("Find x. A. 48 B. 52 C. 60 D. 24", True),
        ("Find x.\nA: 48\nB: 52\nC: 60\nD: 24", True),
        ("Find x. You FIRST think ... put in \\boxed{}.", False),  # the default template
        ("Find x. Choose from: 48, 52, 60, 24.", False),  # listed, but without letters
        ("Find x. (A) 48 (B) 52 (C) 60", False),  # one option missing
        ("Find x. (A) 52 (B) 48 (C) 60 (D) 24", False),  # letters naming other options
        ("Find x. (A) 480 (B) 52 (C) 60 (D) 24", False),  # "48" only as part of "480"
        ("", False),
    ],
)
def test_shown_choices_needs_every_lettered_option(prompt, shown):
    choices = ["48", "52", "60", "24"]
    assert shown_choices(prompt, choices) == (choices if shown else None)
    assert shown_choices(prompt, None) is None


THINK_LETTER = "<think>it is the second</think> \\boxed{B}"


def test_math_reward_item_accepts_a_letter_only_when_shown():
    """What the score stage calls: the item's prompt decides whether ``choices`` count."""
    math, _ = BUILTIN_REWARDS["math"]
    choices = ["48", "52", "60", "24"]
    response = THINK_LETTER
    shown = "Find x.\n(A) 48\n(B) 52\n(C) 60\n(D) 24"
    assert math(response, "52", choices=choices, prompt=shown)["accuracy"] == 1.0
    assert math(response, "52", choices=choices, prompt="Find x.")["accuracy"] == 0.0
    assert math(response, "52", choices=choices)["accuracy"] == 0.0  # no prompt: no letters
    assert math("<think>t</think> \\boxed{52}", "52", choices=choices)["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("$84$", "84"),
        ("84^{\\circ}", "84"),
        ("84 cm^2.", "84"),
        ("84 \\text{ square units}", "84"),
        ("\\left(1, 2\\right)", "(1, 2)"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\text{B}", "B"),
        ("2\\sqrt{3}", "2\\sqrt{3}"),
        ("m", "m"),  # a lone unit word is not removed: nothing precedes it
    ],
)
def test_clean_answer(text, cleaned):
    assert clean_answer(text) == cleaned


THINK = "<think>reasoning</think> "


@pytest.mark.parametrize(
    ("response", "answer", "choices", "accuracy", "fmt", "extracted"),
    [
        (THINK + "\\boxed{2\\sqrt{3}}", "2\\sqrt{3}", None, 1.0, 1.0, "2\\sqrt{3}"),
        ("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}", None, 1.0, 0.0, "2\\sqrt{3}"),
        (THINK + "\\boxed{5}", "2\\sqrt{3}", None, 0.0, 1.0, "5"),
        (THINK + "the answer is 84", "84", None, 0.0, 0.0, ""),  # missing box
        ("", "84", None, 0.0, 0.0, ""),  # empty response
        (THINK + "\\boxed{}", "84", None, 0.0, 1.0, ""),
        (THINK + "\\boxed{B}", "2\\sqrt{3}", CHOICES, 1.0, 1.0, "B"),
        (THINK + "\\boxed{84^\\circ}", "84", None, 1.0, 1.0, "84^\\circ"),
        (THINK + "\\boxed{3} no wait \\boxed{4}", "3", None, 0.0, 1.0, "4"),
        (THINK + "\\boxed{\\frac{40}{3}\\text{ cm}}", "\\frac{40}{3}", None, 1.0, 1.0, None),
    ],
)
def test_math_reward(response, answer, choices, accuracy, fmt, extracted):
    out = math_reward(response, answer, choices)
    assert out["accuracy"] == accuracy
    assert out["format"] == fmt
    assert out["reward"] == pytest.approx(0.9 * accuracy + 0.1 * fmt)
    if extracted is not None:
        assert out["extracted"] == extracted


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.5, 1.0])
def test_math_reward_weights(weight):
    right_no_format = math_reward("\\boxed{3}", "3", format_weight=weight)
    wrong_with_format = math_reward(THINK + "\\boxed{4}", "3", format_weight=weight)
    assert right_no_format["reward"] == pytest.approx(1.0 - weight)
    assert wrong_with_format["reward"] == pytest.approx(weight)


def test_math_reward_rejects_bad_weight():
    with pytest.raises(ValueError, match="format_weight"):
        math_reward("\\boxed{3}", "3", format_weight=1.5)


# ---------------------------------------------------------------- worker pool


def _item(prompt_id: str, sample: int, response: str, answer: str, choices=None) -> dict:
    return {
        "prompt_id": prompt_id,
        "sample": sample,
        "response": response,
        "answer": answer,
        "choices": choices,
    }


def _reward_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_reward.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_score_items_math_in_order_with_two_workers(hang_guard):
    items = [
        _item(f"p{i}", i % 3, THINK + f"\\boxed{{{i}}}", str(i if i % 2 else i + 1))
        for i in range(12)
    ]
    rows = list(score_items(items, "math", workers=2, timeout_s=30))
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [
        (it["prompt_id"], it["sample"]) for it in items
    ]
    for i, row in enumerate(rows):
        expected = 1.0 if i % 2 else 0.0
        assert row["accuracy"] == expected
        assert row["format"] == 1.0
        assert row["reward"] == pytest.approx(0.9 * expected + 0.1)
        assert row["extracted"] == str(i)
        assert row["timed_out"] is False
    assert set(rows[0]) == {
        "prompt_id",
        "sample",
        "reward",
        "format",
        "accuracy",
        "extracted",
        "timed_out",
        "non_finite",
    }


def test_score_items_options_reach_the_reward(hang_guard):
    items = [_item("p", 0, "\\boxed{3}", "3")]
    (row,) = score_items(items, "math", workers=1, timeout_s=30, options={"format_weight": 0.5})
    assert row["reward"] == pytest.approx(0.5)


def test_pathological_latex_times_out_and_the_rest_is_scored(hang_guard):
    items = [
        _item("ok1", 0, THINK + "\\boxed{2\\sqrt{3}}", "2\\sqrt{3}"),
        _item("bad", 0, THINK + f"\\boxed{{{PATHOLOGICAL}}}", "3"),
        _item("ok2", 1, THINK + "\\boxed{84^\\circ}", "84"),
        _item("bad", 1, THINK + f"\\boxed{{{PATHOLOGICAL}}}", "3"),
        _item("ok3", 0, "\\boxed{\\frac{40}{3}}", "\\frac{40}{3}"),
    ]
    rows = list(score_items(items, "math", workers=2, timeout_s=2.0))
    assert [r["timed_out"] for r in rows] == [False, True, False, True, False]
    for row in rows[1::2]:
        assert row["reward"] == row["format"] == row["accuracy"] == 0.0
        assert row["extracted"] == ""
    assert [r["reward"] for r in rows[::2]] == pytest.approx([1.0, 1.0, 0.9])
    summary = summarize(rows)
    assert summary["items"] == 5
    assert summary["timed_out"] == 2
    assert summary["reward_mean"] == pytest.approx(2.9 / 5)
    assert summary["accuracy_mean"] == pytest.approx(3 / 5)


def test_custom_reward_float_and_dict_and_fields(tmp_path, hang_guard):
    path = _reward_file(
        tmp_path,
        """
        def as_float(response, answer, **fields):
            return float(response == answer)

        def as_dict(response, answer, *, sample, choices=None, bonus=0.0, **fields):
            hit = float(response.strip() == answer)
            return {"reward": hit + bonus, "hit": hit, "n_choices": len(choices or []),
                    "sample_seen": sample, "extracted": response.strip()}
        """,
    )
    items = [_item("a", 0, "3", "3"), _item("b", 7, " 4", "5", choices=["1", "2"])]
    rows = list(score_items(items, f"{path}:as_float", workers=1, timeout_s=30))
    assert [r["reward"] for r in rows] == [1.0, 0.0]
    assert set(rows[0]) == {"prompt_id", "sample", "reward", "extracted", "timed_out", "non_finite"}
    assert rows[0]["extracted"] == ""

    rows = list(
        score_items(items, f"{path}:as_dict", workers=2, timeout_s=30, options={"bonus": 0.25})
    )
    assert rows[0] == {
        "prompt_id": "a",
        "sample": 0,
        "reward": 1.25,
        "hit": 1.0,
        "n_choices": 0.0,
        "sample_seen": 0.0,
        "extracted": "3",
        "timed_out": False,
        "non_finite": False,
    }
    assert rows[1]["reward"] == 0.25
    assert rows[1]["n_choices"] == 2.0
    assert rows[1]["sample_seen"] == 7.0


def test_custom_reward_that_hangs_times_out(tmp_path, hang_guard):
    path = _reward_file(
        tmp_path,
        """
        import time

        def slow_on_hang(response, answer, **fields):
            while response == "hang":
                time.sleep(0.05)
            return {"reward": 1.0, "part": 0.5}
        """,
    )
    # The hanging item comes first: its row must wait until the component names are known.
    items = [_item("h", 0, "hang", "x"), _item("a", 0, "fine", "x"), _item("h", 1, "hang", "x")]
    rows = list(score_items(items, f"{path}:slow_on_hang", workers=1, timeout_s=1.0))
    assert [r["timed_out"] for r in rows] == [True, False, True]
    assert rows[0] == {
        "prompt_id": "h",
        "sample": 0,
        "reward": 0.0,
        "part": 0.0,
        "extracted": "",
        "timed_out": True,
        "non_finite": False,
    }
    assert rows[1]["reward"] == 1.0 and rows[1]["part"] == 0.5
    assert set(rows[2]) == set(rows[1])


BURNER = """
import os
from pathlib import Path

def burn(response, answer, **fields):
    if response == "burn":
        Path(__file__).with_name("worker.pid").write_text(str(os.getpid()))
        while True:
            pass
    return 1.0
"""


@pytest.mark.slow
def test_cpu_backstop_ends_a_runaway_worker_as_a_timeout(tmp_path, hang_guard, monkeypatch):
    # The wall-clock limit is out of reach here, so only the kernel's CPU limit can end the item.
    monkeypatch.setattr(runner, "BACKSTOP_FACTOR", 0.0)
    monkeypatch.setattr(runner, "BACKSTOP_EXTRA_S", 0.0)
    path = _reward_file(tmp_path, BURNER)
    items = [_item("b", 0, "burn", "x"), _item("a", 0, "fine", "x")]
    rows = list(score_items(items, f"{path}:burn", workers=1, timeout_s=600))
    assert [r["timed_out"] for r in rows] == [True, False]
    assert [r["reward"] for r in rows] == [0.0, 1.0]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; nobody may be left to reap it


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_worker_of_a_killed_parent_does_not_run_for_ever(tmp_path, hang_guard):
    path = _reward_file(tmp_path, BURNER)
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from stages.score import runner

            if __name__ == "__main__":
                runner.BACKSTOP_FACTOR, runner.BACKSTOP_EXTRA_S = 0.0, 0.0
                item = {{"prompt_id": "b", "sample": 0, "response": "burn", "answer": "x"}}
                list(runner.score_items([item], {str(path) + ":burn"!r}, timeout_s=600))
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    pid_file = tmp_path / "worker.pid"
    while not pid_file.exists() or not pid_file.read_text():
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    parent.kill()  # SIGKILL: the parent gets no chance to kill its worker
    parent.wait()
    while _alive(worker):
        time.sleep(0.1)


def test_non_finite_rewards_score_zero_and_are_counted(tmp_path, hang_guard):
    """A NaN (or infinite) reward or component is the item's problem, not the run's: it scores
    0 in every component and is counted, as a timed-out item is."""
    path = _reward_file(
        tmp_path,
        """
        def odd(response, answer, **fields):
            value = {"nan": float("nan"), "inf": float("inf")}.get(response, 1.0)
            part = float("-inf") if response == "part" else 0.5
            return {"reward": value, "part": part, "extracted": response}
        """,
    )
    items = [_item(str(i), 0, text, "x") for i, text in enumerate(["nan", "ok", "inf", "part"])]
    rows = list(score_items(items, f"{path}:odd", workers=1, timeout_s=30))
    assert [r["non_finite"] for r in rows] == [True, False, True, True]
    assert [(r["reward"], r["part"]) for r in rows] == [(0, 0), (1, 0.5), (0, 0), (0, 0)]
    assert [r["extracted"] for r in rows] == ["nan", "ok", "inf", "part"]
    assert not any(r["timed_out"] for r in rows)
    summary = summarize(rows)
    assert summary["non_finite"] == 3 and summary["reward_mean"] == 0.25


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("raise ZeroDivisionError('boom')", "ZeroDivisionError: boom"),
        ("return 'high'", "str, not a number"),
        ("return None", "NoneType, not a number"),
        ("return {'score': 1.0}", "without a 'reward' key"),
        ("return {'reward': 1.0, 'extracted': 3}", "'extracted' is a int"),
        ("return {'reward': 1.0, 'sample': 3}", "may not return"),
        ("return {'reward': [1.0]}", "list, not a number"),
    ],
)
def test_custom_reward_errors_name_item_and_function(tmp_path, hang_guard, body, match):
    path = _reward_file(
        tmp_path,
        f"""
        def bad(response, answer, **fields):
            if response == "good":
                return 1.0
            {body}
        """,
    )
    items = [_item("fine", 0, "good", "x"), _item("p42", 3, "bad", "x")]
    with pytest.raises(MgpoError, match=match) as caught:
        list(score_items(items, f"{path}:bad", workers=1, timeout_s=30))
    message = str(caught.value)
    assert "prompt_id='p42' sample=3" in message
    assert f"{path}:bad" in message
    assert "\n" not in message


def test_custom_reward_changing_components_is_an_error(tmp_path, hang_guard):
    path = _reward_file(
        tmp_path,
        """
        def fickle(response, answer, **fields):
            return {"reward": 1.0, response: 1.0}
        """,
    )
    items = [_item("a", 0, "x", "1"), _item("b", 0, "y", "1")]
    with pytest.raises(MgpoError, match="prompt_id='b'.*components"):
        list(score_items(items, f"{path}:fickle", workers=1, timeout_s=30))


def test_custom_reward_that_kills_its_worker(tmp_path, hang_guard):
    path = _reward_file(
        tmp_path,
        """
        import os

        def crash(response, answer, **fields):
            os._exit(3)
        """,
    )
    with pytest.raises(
        MgpoError, match=r"prompt_id='a' sample=0.*exited while scoring.*\(exit code 3\)"
    ):
        list(score_items([_item("a", 0, "x", "1")], f"{path}:crash", workers=1, timeout_s=30))


def test_missing_file_fails_before_any_work(tmp_path):
    with pytest.raises(MgpoError, match="does not exist"):
        score_items([], f"{tmp_path}/nope.py:fn", workers=1)


@pytest.mark.parametrize("spec", ["nomath", "reward.txt:fn", "x.py:", "x.py:not-a-name"])
def test_malformed_spec(spec):
    with pytest.raises(MgpoError, match="expected a built-in name"):
        score_items([], spec, workers=1)


def test_missing_function_fails_before_any_item_is_scored(tmp_path, hang_guard):
    path = _reward_file(
        tmp_path,
        """
        from pathlib import Path

        def other(response, answer, **fields):
            Path(__file__).with_name("scored.txt").write_text("touched")
            return 1.0
        """,
    )
    with pytest.raises(MgpoError, match="has no function 'missing'"):
        list(score_items([_item("a", 0, "x", "1")], f"{path}:missing", workers=2))
    assert not (tmp_path / "scored.txt").exists()


def test_reward_file_that_fails_to_import(tmp_path, hang_guard):
    path = _reward_file(tmp_path, "import not_a_module_anywhere\n")
    with pytest.raises(MgpoError, match="importing .*ModuleNotFoundError"):
        list(score_items([_item("a", 0, "x", "1")], f"{path}:fn", workers=1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": 0}, "--workers"),
        ({"timeout_s": 0}, "time limit"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(MgpoError, match=match):
        score_items([], "math", **kwargs)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"prompt_id": "a", "sample": 0, "answer": "1"}, "'response' is not a string"),
        ({"prompt_id": "a", "sample": 0, "response": "1", "answer": None}, "'answer'"),
        ("just a string", "not a dict"),
    ],
)
def test_bad_items(item, match, hang_guard):
    with pytest.raises(MgpoError, match=match):
        list(score_items([item], "math", workers=1))


def test_option_clashing_with_an_item_field(hang_guard):
    with pytest.raises(MgpoError, match="clash"):
        list(score_items([_item("a", 0, "x", "1")], "math", options={"sample": 1}))


def test_stopping_early_leaves_no_worker_behind(hang_guard):
    items = [_item(f"p{i}", 0, f"\\boxed{{{i}}}", "1") for i in range(20)]
    rows = score_items(items, "math", workers=2, timeout_s=30)
    first = next(rows)
    assert first["prompt_id"] == "p0"
    rows.close()
    assert mp.active_children() == []


def test_score_pool_keeps_its_workers_between_calls_and_recovers_after_an_error(hang_guard):
    """The trainer scores every step with one ScorePool: same worker processes each call,
    same rows as one-off score_items, and an error mid-call stops the workers without breaking
    the next call."""
    first = [_item(f"p{i}", 0, THINK + f"\\boxed{{{i}}}", str(i)) for i in range(6)]
    second = [_item(f"q{i}", 1, THINK + f"\\boxed{{{i}}}", "0") for i in range(6)]
    with ScorePool("math", workers=2, timeout_s=30) as pool:
        rows_a = list(pool.score(first))
        pids = sorted(p.pid for p in mp.active_children())
        rows_b = list(pool.score(second))
        assert sorted(p.pid for p in mp.active_children()) == pids and len(pids) == 2
        assert rows_a == list(score_items(first, "math", workers=1, timeout_s=30))
        assert [r["accuracy"] for r in rows_b] == [1.0, 0, 0, 0, 0, 0]
        with pytest.raises(MgpoError, match="not a string"):
            list(pool.score([{"prompt_id": "x", "sample": 0, "response": 1, "answer": "1"}]))
        assert mp.active_children() == []  # stopped after the error
        assert list(pool.score(first)) == rows_a  # and started again on the next call
    assert mp.active_children() == []


def test_summarize_empty():
    assert summarize([]) == {"items": 0, "timed_out": 0, "non_finite": 0}


# --- rewards that cannot hang: scored in the calling process -----------------------------------


def test_bounded_rewards_score_in_process_with_the_rows_workers_give(tmp_path, hang_guard):
    """``short_answer`` and ``last_number`` start no worker and give, row for row, what the same
    functions give through the worker pool (called as a custom ``FILE.py:FN``)."""
    from stages.score import last_number, short_answer

    items = [
        _item("a", 0, "red.", "red", choices=["red", "blue"]),
        _item("a", 1, "\\boxed{blue}", "red", choices=["red", "blue"]),
        _item("b", 0, "9 + 7 = 16", "16"),
        _item("b", 1, "\\boxed{ 16 }", "16"),
        _item("c", 0, "", "3"),
    ]
    for name, module, fn in (
        ("short_answer", short_answer, "short_answer_reward"),
        ("last_number", last_number, "last_number_reward"),
    ):
        pool = ScorePool(name, workers=2, options={"format_weight": 0.2})
        before = set(mp.active_children())
        rows = list(pool.score(items))
        assert pool._pool is None and set(mp.active_children()) == before  # no worker started
        custom = f"{module.__file__}:{fn}"
        assert rows == list(score_items(items, custom, options={"format_weight": 0.2}))
    bad = {**_item("x", 0, "1", "1"), "response": None}
    with pytest.raises(MgpoError, match="score item 0 .prompt_id='x' sample=0.: 'response' is"):
        list(score_items([bad], "last_number"))


@pytest.mark.parametrize("reward", ["short_answer", "last_number"])
def test_bounded_rewards_read_degenerate_responses_in_linear_time(reward, hang_guard):
    """What keeps them out of the workers: no input makes them slow. ``last_number`` once took
    19 s on a boxed run of 2,000 spaces without a closing brace (cubic backtracking)."""
    started = time.perf_counter()
    for text in (
        "\\boxed{" + " " * 100_000 + "x",
        "\\boxed{" + " " * 100_000,
        "\\boxed " * 20_000,
        "<think>" + "</think>\\boxed{" * 20_000,
        "-" * 100_000 + "1" * 100_000,
        " 3." * 50_000,
    ):
        (row,) = score_items([_item("p", 0, text, "3")], reward)
        assert not row["timed_out"]
    assert time.perf_counter() - started < GUARD_S
