"""``mgpo score`` as a user runs it, on real rollout shards: rollouts of the tiny model on the
built-in ``shapes`` prompts, and hand-written rollout sets whose rewards are known. Built-in
rewards (``math``, ``short_answer``) and a custom ``FILE.py:FN``, components as columns,
``extracted``, time limits counted in the summary line, and bad input (one ``error:`` line, exit
2, neither the output directory nor a staging directory left).

Runs go through the console entry point in this process (``run_main``: the code path of the
installed ``mgpo`` script, and one scoring forkserver for the whole session); one case runs the
real CLI in a fresh interpreter.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from helpers import assert_nothing_left, assert_user_error, run_cli, run_main
from stages.shards import open_shards, staging_dir, write_shards

pytestmark = pytest.mark.usefixtures("tiny_model_dir")

N = 2
LIMIT = 4
BASE = ["prompt_id", "sample", "reward", "extracted"]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def rows_of(path: Path, kind: str) -> list[dict[str, Any]]:
    return list(open_shards(path, kind).iter_rows())


def summary_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's one-line summary (rich may wrap it at the console width)."""
    text = " ".join(result.stdout.split())
    assert text.startswith("scores written to"), result.stdout
    return text


def reward_file(root: Path, name: str, body: str) -> str:
    path = root / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return f"{path}:reward"


def rollout_rows(responses: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    return [
        {
            "prompt_id": pid,
            "sample": sample,
            "response": text,
            "response_ids": [1, 2, 3],
            "logprobs": [-0.5, -0.25, -1.0],
            "finish_reason": "stop",
            "policy_step": 0,
        }
        for pid, sample, text in responses
    ]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("score-stage")


@pytest.fixture(scope="module")
def prompts(root: Path) -> Path:
    out = root / "prompts"
    assert_ok(run_main("prepare", "shapes", "--size", "6", "--out", out))
    return out


@pytest.fixture(scope="module")
def rollouts(root: Path, prompts: Path) -> Path:
    """Real rollouts of the tiny model: LIMIT prompts x N samples."""
    args = ["--model", "tiny", "-n", str(N), "--max-new-tokens", "6", "--limit", str(LIMIT)]
    assert_ok(run_main("rollout", "--prompts", prompts, *args))
    return root / "prompts-rollouts"


@pytest.fixture(scope="module")
def answers(prompts: Path) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in open_shards(prompts, "prompts").iter_rows()}


# ------------------------------------------------------------------- built-in rewards, real rollouts


def _check_layout(scores: Path, rollouts: Path, components: list[str]) -> list[dict[str, Any]]:
    """Score rows line up with the rollout rows; columns and types as the contract says."""
    shard_set = open_shards(scores, "scores")
    schema = shard_set.schema
    assert schema.names == [*BASE, *components, "timed_out", "non_finite"]
    for name in ("reward", *components):
        assert schema.field(name).type == pa.float32(), name
    assert schema.field("extracted").type == pa.string()
    assert schema.field("timed_out").type == pa.bool_()
    rows = rows_of(scores, "scores")
    want = [(r["prompt_id"], r["sample"]) for r in rows_of(rollouts, "rollouts")]
    assert [(r["prompt_id"], r["sample"]) for r in rows] == want
    assert not any(r["timed_out"] for r in rows)
    return rows


def test_math_on_real_rollouts(root, rollouts) -> None:
    result = run_main("score", "--rollouts", rollouts)
    assert_ok(result)
    scores = root / "prompts-scores"  # the default: NAME-scores beside NAME-rollouts
    line = summary_line(result)
    assert line.startswith(f"scores written to {scores}: {LIMIT * N} items, mean reward")
    assert "timed out" not in line
    rows = _check_layout(scores, rollouts, ["format", "accuracy"])
    think_boxed = re.compile(r"<think>.*</think>.*\\boxed\{.*\}", re.DOTALL)
    for row, rollout in zip(rows, rows_of(rollouts, "rollouts"), strict=True):
        assert row["format"] == float(bool(think_boxed.fullmatch(rollout["response"].strip())))
        assert row["reward"] == pytest.approx(0.9 * row["accuracy"] + 0.1 * row["format"])
        if "\\boxed" not in rollout["response"]:
            assert row["extracted"] == "" and row["accuracy"] == 0.0
    mean = sum(r["reward"] for r in rows) / len(rows)
    assert f"mean reward {mean:.4f}" in line

    # Two workers: the same rows in the same order.
    out = root / "math-2-workers"
    assert_ok(run_main("score", "--rollouts", rollouts, "--workers", "2", "--out", out))
    assert rows_of(out, "scores") == rows


def test_short_answer_on_real_rollouts(root, rollouts, answers) -> None:
    out = root / "short"
    assert_ok(run_main("score", "--rollouts", rollouts, "--reward", "short_answer", "--out", out))
    rows = _check_layout(out, rollouts, ["format", "accuracy"])
    word = re.compile(r"[A-Za-z0-9]+(?:\.[0-9]+)?")
    for row, rollout in zip(rows, rows_of(rollouts, "rollouts"), strict=True):
        if "\\boxed" not in rollout["response"]:  # then the answer read is the first word
            first = word.search(rollout["response"])
            assert row["extracted"] == (first.group(0) if first else "")
        correct = row["extracted"].lower() == answers[row["prompt_id"]].lower()
        assert row["accuracy"] == float(correct)
        assert row["reward"] == pytest.approx(0.9 * row["accuracy"] + 0.1 * row["format"])


# ------------------------------------------------------------------- known rewards, written rollouts


MATH_CASES = [
    # answer, response, format, accuracy, extracted
    ("12", "<think>3 x 4</think> so \\boxed{12}", 1.0, 1.0, "12"),
    ("12", "\\boxed{12}", 0.0, 1.0, "12"),
    ("12", "<think>guess</think> \\boxed{13}", 1.0, 0.0, "13"),
    ("\\frac{1}{2}", "<think>half</think> \\boxed{0.5}", 1.0, 1.0, "0.5"),
    ("7", "first \\boxed{1}, then \\boxed{7}", 0.0, 1.0, "7"),
    ("7", "no box at all: 7", 0.0, 0.0, ""),
]


@pytest.fixture(scope="module")
def math_set(root: Path) -> tuple[Path, Path]:
    """Text-only prompts with math answers, and one rollout per case (written, not sampled)."""
    prompt_rows = [
        {
            "id": f"m{i}",
            "prompt": "Compute it.",
            "images": [],
            "answer": answer,
            "choices": None,
            "source": "test",
            "meta": {},
        }
        for i, (answer, *_) in enumerate(MATH_CASES)
    ]
    prompts = write_shards(root / "math-prompts", "prompts", prompt_rows, producer={"command": "t"})
    rows = rollout_rows([(f"m{i}", 0, case[1]) for i, case in enumerate(MATH_CASES)])
    rollouts = write_shards(root / "math-rollouts", "rollouts", rows, producer={"command": "t"})
    return prompts, rollouts


@pytest.mark.parametrize("format_weight", [None, 0.5])
def test_math_rewards_of_known_responses(root, math_set, format_weight) -> None:
    prompts, rollouts = math_set
    out = root / f"math-known-{format_weight}"
    weight = ["--format-weight", str(format_weight)] if format_weight is not None else []
    args = ["score", "--rollouts", rollouts, "--prompts", prompts, "--out", out, *weight]
    assert_ok(run_main(*args))
    w = 0.1 if format_weight is None else format_weight
    rows = rows_of(out, "scores")
    for row, (_, _, fmt, acc, extracted) in zip(rows, MATH_CASES, strict=True):
        assert (row["format"], row["accuracy"], row["extracted"]) == (fmt, acc, extracted)
        assert row["reward"] == pytest.approx((1 - w) * acc + w * fmt)
    config = open_shards(out, "scores").manifest["producer"]["config"]
    assert config["reward"] == "math" and config["prompts"] == str(prompts.resolve())


def test_short_answer_rewards_of_known_responses(root, prompts, answers) -> None:
    first = sorted(answers)[0]
    right = answers[first]
    wrong = next(a for a in ("circle", "square", "triangle") if a != right)
    cases = [  # response, accuracy, extracted
        (f"{right.capitalize()}.", 1.0, right.capitalize()),
        (f"I think \\boxed{{{right}}}", 1.0, right),
        (f"{right}s", 0.0, f"{right}s"),
        (wrong, 0.0, wrong),
    ]
    rollouts = root / "short-known-rollouts"
    rows = rollout_rows([(first, s, text) for s, (text, _, _) in enumerate(cases)])
    producer = {"command": "t", "config": {"prompts": str(prompts)}}
    write_shards(rollouts, "rollouts", rows, producer=producer)
    assert_ok(run_main("score", "--rollouts", rollouts, "--reward", "short_answer"))
    scored = rows_of(root / "short-known-scores", "scores")
    for row, (_, accuracy, extracted) in zip(scored, cases, strict=True):
        assert (row["accuracy"], row["extracted"]) == (accuracy, extracted)
        assert row["reward"] == pytest.approx(0.9 * row["accuracy"] + 0.1 * row["format"])


# ------------------------------------------------------------------------------- custom rewards


def test_custom_reward_returning_a_dict(root, rollouts, answers) -> None:
    spec = reward_file(
        root,
        "dict_reward",
        """
        def reward(response, answer, *, prompt_id, sample, choices, **kwargs):
            words = response.split()
            return {
                "reward": len(words) / 10,
                "chars": len(response),
                "sample_seen": sample,
                "has_choices": choices is not None,
                "extracted": prompt_id + "/" + answer,
            }
        """,
    )
    out = root / "custom-dict"
    result = run_main("score", "--rollouts", rollouts, "--reward", spec, "--out", out)
    assert_ok(result)
    assert summary_line(result).startswith(f"scores written to {out}: {LIMIT * N} items")
    schema = open_shards(out, "scores").schema
    assert schema.names == [*BASE, "chars", "sample_seen", "has_choices", "timed_out", "non_finite"]
    assert all(schema.field(c).type == pa.float32() for c in ("chars", "sample_seen"))
    rows = rows_of(out, "scores")
    for row, rollout in zip(rows, rows_of(rollouts, "rollouts"), strict=True):
        text = rollout["response"]
        assert row["reward"] == pytest.approx(len(text.split()) / 10)
        assert row["chars"] == len(text) and row["sample_seen"] == rollout["sample"]
        assert row["has_choices"] == 1.0  # shapes prompts offer choices
        assert row["extracted"] == f"{rollout['prompt_id']}/{answers[rollout['prompt_id']]}"


def test_custom_reward_returning_a_float(root, rollouts) -> None:
    spec = reward_file(
        root, "float_reward", "def reward(response, answer, **kw):\n    return 0.25\n"
    )
    out = root / "custom-float"
    assert_ok(run_main("score", "--rollouts", rollouts, "--reward", spec, "--out", out))
    assert open_shards(out, "scores").schema.names == [*BASE, "timed_out", "non_finite"]
    assert {(r["reward"], r["extracted"]) for r in rows_of(out, "scores")} == {(0.25, "")}


def test_timed_out_items_are_counted_in_the_summary_line(root, rollouts) -> None:
    """A real ``mgpo`` process: one item of a custom reward never returns."""
    victim = rows_of(rollouts, "rollouts")[1]
    spec = reward_file(
        root,
        "hang_reward",
        f"""
        import time

        def reward(response, answer, *, prompt_id, sample, **kwargs):
            if (prompt_id, sample) == ({victim["prompt_id"]!r}, {victim["sample"]}):
                while True:
                    time.sleep(1)
            return {{"reward": 1.0, "length": len(response)}}
        """,
    )
    out = root / "timed"
    result = run_cli(
        "score", "--rollouts", rollouts, "--reward", spec, "--timeout", "1", "--out", out
    )
    assert_ok(result)
    assert summary_line(result).endswith(f"{LIMIT * N} items, mean reward 0.8750, 1 timed out")
    assert "1 item(s) hit the 1s limit and scored 0" in " ".join(result.stderr.split())
    rows = rows_of(out, "scores")
    assert [r["timed_out"] for r in rows] == [i == 1 for i in range(len(rows))]
    assert rows[1] | {"prompt_id": None, "sample": None} == {
        "prompt_id": None,
        "sample": None,
        "reward": 0.0,
        "length": 0.0,
        "extracted": "",
        "timed_out": True,
        "non_finite": False,
    }


# ------------------------------------------------------------------------------------ bad input


def _no_manifest(root: Path, rollouts: Path) -> list[str | Path]:
    broken = root / "no-manifest-rollouts"
    shutil.copytree(rollouts, broken)
    (broken / "manifest.json").unlink()
    return ["--rollouts", broken]


def _moved_prompts(root: Path, rollouts: Path) -> list[str | Path]:
    """Rollouts whose manifest names prompt shards that are no longer there."""
    moved = root / "moved-rollouts"
    shutil.copytree(rollouts, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["producer"]["config"]["prompts"] = str(root / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    return ["--rollouts", moved]


def _raising(root: Path, rollouts: Path) -> list[str | Path]:
    body = """
    def reward(response, answer, *, sample, **kwargs):
        if sample == 1:
            raise ValueError("cannot read this one")
        return 1.0
    """
    return ["--rollouts", rollouts, "--reward", reward_file(root, "raises", body)]


def _other_prompts(root: Path, rollouts: Path) -> list[str | Path]:
    other = root / "other-prompts"
    if not other.exists():
        assert_ok(run_main("prepare", "shapes", "--split", "test", "--size", "2", "--out", other))
    return ["--rollouts", rollouts, "--prompts", other]


BAD = {
    "no_manifest": (_no_manifest, ["no-manifest-rollouts", "manifest.json", "incomplete"]),
    "missing_rollouts": (lambda root, r: ["--rollouts", root / "nowhere"], ["no such shard"]),
    "moved_prompts": (_moved_prompts, ["gone", "not there", "--prompts"]),
    "ids_not_in_prompts": (_other_prompts, ["shapes-train-000000", "other-prompts"]),
    "reward_raises": (_raising, ["raises.py", "sample=1", "ValueError: cannot read this one"]),
    "reward_import_fails": (
        lambda root, r: ["--rollouts", r, "--reward", reward_file(root, "bad", "1 / 0\n")],
        ["bad.py", "ZeroDivisionError"],
    ),
    "reward_file_missing": (
        lambda root, r: ["--rollouts", r, "--reward", f"{root / 'none.py'}:reward"],
        ["none.py", "does not exist"],
    ),
    "unknown_reward": (lambda root, r: ["--rollouts", r, "--reward", "maths"], ["'maths'"]),
    "zero_timeout": (
        lambda root, r: ["--rollouts", r, "--timeout", "0"],
        ["--timeout must be positive"],
    ),
    "zero_workers": (lambda root, r: ["--rollouts", r, "--workers", "0"], ["--workers"]),
    "format_weight": (lambda root, r: ["--rollouts", r, "--format-weight", "2"], ["[0, 1]"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_and_leaves_nothing(root, rollouts, name: str) -> None:
    make, fragments = BAD[name]
    out = root / "out" / f"bad-{name}"
    assert_user_error(run_main("score", *make(root, rollouts), "--out", out), *fragments)
    assert_nothing_left(out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_complete_output_is_refused_before_any_scoring(root, rollouts) -> None:
    out = root / "complete-scores"
    assert_ok(run_main("score", "--rollouts", rollouts, "--reward", "short_answer", "--out", out))
    before = rows_of(out, "scores")
    # The output is refused before the reward file is even imported (it would fail to).
    broken = reward_file(root, "broken", "raise RuntimeError('never imported')\n")
    args = ["score", "--rollouts", rollouts, "--reward", broken, "--out", out]
    assert_user_error(run_main(*args), "already holds a complete shard set")
    assert rows_of(out, "scores") == before
    assert_ok(run_main("score", "--rollouts", rollouts, "--out", out, "--overwrite"))
    assert rows_of(out, "scores") != before  # math now, short_answer before
    assert not staging_dir(out).exists()


@pytest.mark.parametrize("which", ["rollouts", "prompts"])
def test_output_onto_an_input_is_refused_even_with_overwrite(
    root, rollouts, prompts, which
) -> None:
    target = root / f"input-{which}"
    shutil.copytree(rollouts if which == "rollouts" else prompts, target)
    before = (target / "manifest.json").read_text()
    if which == "rollouts":
        args = ["--rollouts", target, "--prompts", prompts]
    else:
        args = ["--rollouts", rollouts, "--prompts", target]
    for extra in ((), ("--overwrite",)):
        result = run_main("score", *args, "--out", target, *extra)
        assert_user_error(result, "--out", "is an input directory")
    assert (target / "manifest.json").read_text() == before
    assert not staging_dir(target).exists()
