"""``mgpo eval`` end to end on the built-in tiny model: real CLI runs on local benchmark copies
laid out as their hub snapshots are published (tests/eval_fixtures.py) and the built-in
``shapes`` benchmark.

The main runs are subprocesses (``run_cli``); runs that must stop at a bad input, or only reuse
finished work, go through the same console entry point in this process (``run_main``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval_fixtures import (
    geometry3k_record,
    mathverse_record,
    mathvision_record,
    mathvista_record,
    png,
    wemath_record,
    write_geometry3k,
    write_mathverse,
    write_mathvision,
    write_mathvista,
    write_wemath,
)
from helpers import assert_user_error, launch_cli, run_cli, run_main
from stages.eval import SUITE, get_benchmark, read_summary
from stages.eval.run import PREDICTIONS
from stages.score.short_answer import short_answer_reward
from stages.shards import open_shards, write_shards

FAST = ("--limit", "2", "--max-new-tokens", "4", "--workers", "1", "--batch-size", "4")
ROLLOUT_COLUMNS = ("response_ids", "logprobs", "finish_reason", "policy_step")


# Items per benchmark in ``suite_source``, and with ``--limit 2`` (We-Math: two composite
# problems, every row of each).
ITEMS = {"mathvista": 3, "mathverse": 4, "mathvision": 3, "wemath": 10, "geometry3k": 3}
LIMITED = {"mathvista": 2, "mathverse": 2, "mathvision": 2, "wemath": 6, "geometry3k": 2}


@pytest.fixture(scope="module")
def suite_source(tmp_path_factory) -> Path:
    """One folder per benchmark of the paper's suite, each a hub snapshot as published."""
    root = tmp_path_factory.mktemp("benchmarks")
    write_mathvista(
        root,
        [
            mathvista_record("1", "5", "multi_choice", "text", choices=["3", "4", "5", "6"]),
            mathvista_record("2", "12", "free_form", "integer"),
            mathvista_record("3", "1.5", "free_form", "float", precision=1.0),
        ],
    )
    question = "Find the angle.\nChoices:\nA:30\nB:60"
    write_mathverse(
        root,
        [
            mathverse_record(1, 1, "Text Dominant", question, "B", "multi-choice"),
            mathverse_record(2, 2, "Vision Only", "", "3", "free-form", "Find y."),
            mathverse_record(3, 3, "Text Lite", "Find x.", "2", "free-form"),
            mathverse_record(4, 1, "Vision Only", "", "B", "multi-choice", question),
        ],
    )
    options = ["1", "2", "3", "4", "5"]
    write_mathvision(
        root,
        {
            "test": [
                mathvision_record(i, "C", options, level=1, subject="arithmetic") for i in (1, 2, 3)
            ],
            "testmini": [mathvision_record(9, "$\\frac{1}{3}$", [], 2, "algebra")],
        },
    )
    parts = {"2steps": ("1", "2", "multi"), "3steps": ("1", "2", "3", "multi")}
    wemath = [
        wemath_record(f"{steps}_{n}", f"{steps}_{part}", "A", 10 * n + i, "concept")
        for steps, n in (("2steps", 1), ("2steps", 2), ("3steps", 1))
        for i, part in enumerate(parts[steps])
    ]
    write_wemath(root, wemath)
    write_geometry3k(
        root,
        [
            geometry3k_record(i, f"<image>x{i}?", ["0", "1", "2", "3"], i, png((i * 60, 0, 0)))
            for i in range(3)
        ],
    )
    return root


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """A training run directory whose exported policy (RUN/final) is a copy of the tiny model."""
    run = tmp_path_factory.mktemp("runs") / "demo"
    shutil.copytree(tiny_model_dir, run / "final")
    return run


def _predictions(folder: Path) -> list[dict]:
    shards = open_shards(folder / "predictions", "eval")
    assert set(PREDICTIONS.names) <= set(shards.schema.names)
    return list(shards.iter_rows())


def _results(out: Path, tag: str, bench_name: str) -> Path:
    """``OUT/TAG/BENCH/SPLIT`` of a benchmark's default split."""
    return out / tag / bench_name / get_benchmark(bench_name).default_split


def _check_pair(folder: Path, bench_name: str, expected_rows: int, limit: int | None = 2) -> None:
    """Shards readable as their kinds; summary.json agrees with the per-item ``correct``; each
    ``correct`` is what the benchmark's rules say of that response."""
    bench = get_benchmark(bench_name)
    prompts = {r["id"]: r for r in open_shards(folder / "prompts", "prompts").iter_rows()}
    assert len(prompts) == expected_rows
    assert all(len(r["images"]) == r["prompt"].count("<image>") for r in prompts.values())
    rollouts = open_shards(folder / "rollouts", "rollouts")
    assert rollouts.num_rows == expected_rows
    rows = _predictions(folder)
    assert [r["prompt_id"] for r in rows] == list(prompts)
    for row in rows:
        assert all(column in row for column in ROLLOUT_COLUMNS)
        assert 1 <= len(row["response_ids"]) <= 4 and len(row["logprobs"]) == len(
            row["response_ids"]
        )
        assert row["answer"] == prompts[row["prompt_id"]]["answer"]
        again = bench.score(prompts[row["prompt_id"]], row["response"])
        assert row["correct"] == again["correct"], row
    summary = read_summary(folder / "summary.json")
    correct = sum(r["correct"] for r in rows)
    assert (summary["bench"], summary["total"], summary["correct"]) == (
        bench_name,
        len(rows),
        correct,
    )
    assert summary["headline"]["accuracy"] == pytest.approx(correct / len(rows))
    assert summary["settings"]["limit"] == limit and summary["settings"]["temperature"] == 0.0


@pytest.mark.slow
def test_all_with_two_models_gives_one_table(suite_source, run_dir, tmp_path):
    out = tmp_path / "evals"
    result = run_cli(
        "eval",
        "all",
        "--source",
        suite_source,
        "--model",
        "tiny",
        "--model",
        run_dir,
        "--out",
        out,
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    tags = ("tiny", "demo-final")
    assert sorted(p.name for p in out.iterdir()) == sorted(tags)
    for tag in tags:
        assert sorted(p.name for p in (out / tag).iterdir()) == sorted(SUITE)  # no shapes
        for bench_name in SUITE:
            _check_pair(_results(out, tag, bench_name), bench_name, LIMITED[bench_name])
    table = result.stdout
    assert table.count("Results (%)") == 1
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == list(tags)
    for bench_name in SUITE:
        assert bench_name in table
    assert "shapes" not in table
    # The same tiny weights under two names: greedy responses are the same.
    for bench_name in SUITE:
        a, b = (_predictions(_results(out, tag, bench_name)) for tag in tags)
        assert [r["response"] for r in a] == [r["response"] for r in b]


@pytest.mark.slow
def test_all_on_hub_snapshots_scores_every_item(suite_source, tmp_path):
    """``mgpo eval all --source DIR`` on the published layouts (README configs, JSON siblings,
    key-major We-Math, Geometry3K's current columns, MathVision's decoded_image) completes and
    each summary counts every item of its split."""
    out = tmp_path / "evals"
    result = run_cli(
        "eval", "all", "--source", suite_source, "--model", "tiny", "--out", out, *FAST[2:]
    )
    assert result.returncode == 0, result.stderr
    for bench_name in SUITE:
        folder = _results(out, "tiny", bench_name)
        _check_pair(folder, bench_name, ITEMS[bench_name], limit=None)
    dims = read_summary(_results(out, "tiny", "wemath") / "summary.json")["four_dimensional"]
    assert dims["composite_problems"] == 3 and dims["incomplete_groups"] == 0


@pytest.mark.slow
def test_shapes_rescoring_reuse_and_changed_settings(tiny_model_dir, tmp_path):
    out = tmp_path / "evals"
    args = ("eval", "shapes", "--model", "tiny", "--out", out, *FAST[2:], "--limit", "4")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    folder = out / "tiny" / "shapes" / "test"
    prompts = list(open_shards(folder / "prompts", "prompts").iter_rows())
    # Exactly what `mgpo prepare shapes --split test` makes (the tiny recipe's data).
    from stages.prepare import DATASETS, PrepareOptions
    from stages.prepare.run import prompt_rows

    prepared = prompt_rows(PrepareOptions(name="shapes", split="test", limit=4), DATASETS["shapes"])
    assert [(r["id"], r["prompt"], r["answer"]) for r in prompts] == [
        (r["id"], r["prompt"], r["answer"]) for r in prepared
    ]

    # Responses edited on disk (a real shard set) are rescored without loading the model.
    rollouts = list(open_shards(folder / "rollouts", "rollouts").iter_rows())
    answers = [r["answer"] for r in prompts]
    edits = [f"\\boxed{{{answers[0]}}}", f"{answers[1].upper()}.", "no idea", ""]
    for row, text in zip(rollouts, edits, strict=True):
        row["response"] = text
    write_shards(
        folder / "rollouts", "rollouts", rollouts, producer={"test": "edited"}, overwrite=True
    )
    shutil.rmtree(folder / "predictions")
    (folder / "summary.json").unlink()
    rescored = run_main(*args)
    assert rescored.returncode == 0, rescored.stderr
    assert "loading tiny" not in rescored.stderr
    rows = _predictions(folder)
    expected = [
        bool(short_answer_reward(t, a)["accuracy"]) for t, a in zip(edits, answers, strict=True)
    ]
    assert [r["correct"] for r in rows] == expected == [True, True, False, False]
    summary = read_summary(folder / "summary.json")
    assert (summary["correct"], summary["total"]) == (2, 4)
    assert "50.0" in rescored.stdout

    # The same settings again: everything reused; other settings: one line, nothing touched.
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again = run_main(*args)
    assert again.returncode == 0 and "reusing" in again.stderr and "50.0" in again.stdout
    changed = run_main(*args, "--max-new-tokens", "5")
    assert_user_error(changed, "other settings", "max_new_tokens: 4 -> 5", "--overwrite")
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(tiny_model_dir, tmp_path):
    """``accelerate launch --num_processes 2 mgpo eval``: each process generates and scores its
    share of the items; the folder holds one rollout set, one prediction set and the summary of
    the one-process run (sampled, so the samples must not depend on the process count)."""
    args = ("eval", "shapes", "--model", "tiny", *FAST[2:], "--limit", "6")
    args += ("--temperature", "1.0", "-n", "2")
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli(*args, "--out", one)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = launch_cli(2, *args, "--out", two)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout == single.stdout  # one results table, from the main process
    folders = [out / "tiny" / "shapes" / "test" for out in (one, two)]
    summaries = [read_summary(folder / "summary.json") for folder in folders]
    assert summaries[0] == summaries[1] and summaries[0]["total"] == 12
    keyed = [{(r["prompt_id"], r["sample"]): r for r in _predictions(folder)} for folder in folders]
    assert keyed[0].keys() == keyed[1].keys()
    for key, row in keyed[0].items():
        other = keyed[1][key]
        assert row["response_ids"] == other["response_ids"] and row["correct"] == other["correct"]
        assert row["logprobs"] == pytest.approx(other["logprobs"], abs=1e-5)
    parts = sorted(p.name for p in (folders[1] / "rollouts").glob("part-*"))
    assert parts == ["part-00000.parquet", "part-00001.parquet"]  # 3 items per process


def _broken_model(tiny_model_dir: Path, folder: Path) -> Path:
    """A model folder whose config is fine but whose weights are missing."""
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("mathvsta", "--model", "tiny"), ("unknown benchmark 'mathvsta'", "mathvista")),
        (("mathvista", "--split", "dev", "--model", "tiny"), ("no split 'dev'",)),
        (("shapes", "--subset", "impossible", "--model", "tiny"), ("no subset 'impossible'",)),
        (("shapes", "--model", "tiny", "--model", "no/such/dir"), ("no/such/dir",)),
        (("shapes", "--model", "tiny", "-n", "2"), ("-n 2", "--temperature")),
        (("shapes",), ("missing --model",)),
        (("shapes", "--model", "tiny", "--source", "."), ("generated locally",)),
        (("shapes", "--model", "tiny", "--judge", "http://127.0.0.1:9"), ("cannot reach",)),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, args, fragments):
    out = tmp_path / "evals"
    assert_user_error(run_main("eval", *args, "--out", out), *fragments)
    assert not out.exists()


def test_bad_sources_write_nothing(tiny_model_dir, suite_source, tmp_path):
    out = tmp_path / "evals"
    only_test = write_mathvision(tmp_path, {"test": [mathvision_record(1, "A", [], 1, "x")]})
    result = run_main(
        "eval",
        "mathvision",
        "--split",
        "testmini",
        "--source",
        only_test,
        "--model",
        "tiny",
        "--out",
        out,
    )
    assert_user_error(result, "README.md: split 'testmini' is data/testmini-*, which matches no")
    partial = tmp_path / "partial"
    shutil.copytree(suite_source / "mathvista", partial / "mathvista")
    result = run_main("eval", "all", "--source", partial, "--model", "tiny", "--out", out)
    assert_user_error(result, "no folder mathverse/")
    assert not out.exists()


def test_a_model_that_fails_to_load_leaves_no_output(tiny_model_dir, tmp_path):
    out = tmp_path / "evals"
    broken = _broken_model(tiny_model_dir, tmp_path / "broken")
    result = run_main("eval", "shapes", "--model", broken, "--out", out, *FAST)
    assert_user_error(result, "cannot load model", "broken")
    assert not out.exists()


def test_model_tags(tiny_model_dir, tmp_path):
    from stages.eval.targets import locate, tag_of

    run = tmp_path / "runs" / "my run"
    shutil.copytree(tiny_model_dir, run / "final")
    shutil.copytree(tiny_model_dir, run / "checkpoints" / "step-000010")
    assert tag_of(locate(str(run))) == tag_of(locate(str(run / "final"))) == "my-run-final"
    assert tag_of(locate(str(run / "checkpoints" / "step-000010"))) == "my-run-step-000010"
    assert tag_of(locate("Qwen/Qwen2.5-VL-3B-Instruct")) == "Qwen--Qwen2.5-VL-3B-Instruct"
    assert tag_of(locate("tiny")) == "tiny"
    # A run killed before it finished is evaluated at its newest checkpoint; one killed before
    # its first checkpoint has no policy to evaluate.
    shutil.rmtree(run / "final")
    assert locate(str(run)) == str((run / "checkpoints" / "step-000010").resolve())
    shutil.rmtree(run / "checkpoints" / "step-000010")
    result = run_main("eval", "shapes", "--model", run, "--out", tmp_path / "evals")
    assert_user_error(result, "no policy yet", "before its first checkpoint")
    assert not (tmp_path / "evals").exists()


def test_a_source_that_fails_to_load_leaves_nothing_and_the_fixed_rerun_runs(
    tiny_model_dir, suite_source, tmp_path
):
    """A loader failure is one line (exit 2) and writes no settings, so the rerun on the
    repaired copy is not refused as "evaluated before with other settings"."""
    source = tmp_path / "mathverse"
    shutil.copytree(suite_source / "mathverse", source)
    good = (source / "testmini.parquet").read_bytes()
    (source / "testmini.parquet").write_bytes(b"PAR1 not really a parquet file PAR1")
    out = tmp_path / "evals"
    args = ("eval", "mathverse", "--source", source, "--model", "tiny", "--out", out, *FAST)
    assert_user_error(run_main(*args), "--source", "could not read")
    assert not out.exists()
    (source / "testmini.parquet").write_bytes(good)
    result = run_main(*args)
    assert result.returncode == 0, result.stderr
    _check_pair(out / "tiny" / "mathverse" / "testmini", "mathverse", 2)


def test_split_and_subset_have_their_own_folders(tiny_model_dir, suite_source, tmp_path):
    out = tmp_path / "evals"
    common = ("--source", suite_source / "mathverse", "--model", "tiny", "--out", out, *FAST)
    full = run_main("eval", "mathverse", *common)
    subset = run_main("eval", "mathverse", "--subset", "vision_only", *common)
    assert full.returncode == 0 and subset.returncode == 0, full.stderr + subset.stderr
    folder = out / "tiny" / "mathverse"
    assert sorted(p.name for p in folder.iterdir()) == ["testmini", "testmini-vision_only"]
    whole = read_summary(folder / "testmini" / "summary.json")
    vision = read_summary(folder / "testmini-vision_only" / "summary.json")
    assert whole["settings"]["subset"] is None and vision["settings"]["subset"] == "vision_only"
    assert list(vision["breakdowns"]["problem_version"]) == ["Vision Only"]


def test_mathvista_test_split_gives_predictions_and_no_accuracy(
    tiny_model_dir, suite_source, tmp_path
):
    out = tmp_path / "evals"
    source = suite_source / "mathvista"
    result = run_main(
        "eval", "mathvista", "--split", "test", "--source", source, "--model", "tiny",
        "--out", out, *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = out / "tiny" / "mathvista" / "test"
    rows = _predictions(folder)
    assert len(rows) == 2 and {r["answer"] for r in rows} == {""}
    summary = read_summary(folder / "summary.json")
    assert summary["headline"] == {"accuracy": None} and summary["total"] == 2
    assert "correct" not in summary
    assert "no public answers" in " ".join(result.stdout.split())
    table_row = next(line for line in result.stdout.splitlines() if line.startswith("│ tiny"))
    assert "–" in table_row  # a dash, not 0.0
