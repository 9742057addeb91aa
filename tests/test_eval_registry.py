"""The benchmark registry, bad input (one-line MgpoError, exit 2 in the CLI), and Geometry3K."""

from __future__ import annotations

import pytest

from eval_fixtures import png, write_geometry3k
from stages.errors import MgpoError
from stages.eval import BENCHMARKS, SUITE, get_benchmark, resolve, score_rows

SIZES = {
    "mathvista": ("AI4Math/MathVista", "testmini", 1000),
    "mathverse": ("AI4Math/MathVerse", "testmini", 3940),
    "mathvision": ("MathLLMs/MathVision", "test", 3040),
    "wemath": ("We-Math/We-Math", "testmini", 1740),
    "geometry3k": ("hiyouga/geometry3k", "test", 601),
}


def test_registry_holds_the_paper_suite():
    assert set(SUITE) == set(SIZES)
    assert set(BENCHMARKS) == set(SIZES) | {"shapes", "arithmetic"}  # built in, not the suite
    for name, (hub_id, split, size) in SIZES.items():
        bench = BENCHMARKS[name]
        assert (bench.hub_id, bench.default_split, bench.splits[split]) == (hub_id, split, size)
        assert bench.notes
    assert BENCHMARKS["mathvision"].splits["testmini"] == 304
    assert [b.name for b in resolve("all")] == list(SUITE)
    assert resolve("wemath") == [BENCHMARKS["wemath"]]


def test_unknown_benchmark_is_one_line_with_a_suggestion():
    with pytest.raises(MgpoError) as error:
        get_benchmark("mathvsta")
    message = str(error.value)
    assert "unknown benchmark 'mathvsta'" in message and "did you mean 'mathvista'" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", list(SIZES))
def test_unknown_split_is_rejected_before_any_download(name):
    with pytest.raises(MgpoError, match=f"{name}: no split 'dev' \\(available: ") as error:
        BENCHMARKS[name].load(split="dev")
    assert "\n" not in str(error.value)


def test_missing_source_and_negative_limit(tmp_path):
    with pytest.raises(MgpoError, match="--source .*: no such file or directory"):
        BENCHMARKS["mathvista"].load(source=tmp_path / "nowhere")
    with pytest.raises(MgpoError, match="--limit must be >= 0"):
        BENCHMARKS["mathvista"].load(source=tmp_path, limit=-1)


def test_unexpected_columns_name_the_row(tmp_path):
    folder = write_geometry3k(tmp_path, [{"images": [], "problem": "p", "answer": "1"}])
    with pytest.raises(MgpoError, match="mathvista testmini row 0: missing column 'pid'"):
        BENCHMARKS["mathvista"].load(source=folder / "data" / "test-00000-of-00001.parquet")


@pytest.fixture
def geometry_rows(tmp_path):
    records = [
        {"images": [{"bytes": png(), "path": None}], "problem": "<image>Find x.", "answer": "5"},
        {
            "images": [{"bytes": png(), "path": None}],
            "problem": "<image>Find the area.",
            "answer": "6\\sqrt{3}",
        },
    ]
    return get_benchmark("geometry3k").load(source=write_geometry3k(tmp_path, records))


def test_geometry3k_rows_and_ids(geometry_rows):
    assert [r["id"] for r in geometry_rows] == ["geometry3k-test-000000", "geometry3k-test-000001"]
    prompt = geometry_rows[0]["prompt"]
    assert prompt.startswith("<image>Find x. You FIRST think") and prompt.count("<image>") == 1


def test_geometry3k_is_the_math_reward_accuracy(geometry_rows):
    from stages.score.math_reward import math_reward

    bench = get_benchmark("geometry3k")
    responses = [
        "<think>...</think> x = \\boxed{5}",
        "<think>...</think> \\boxed{10.39}",  # approximation of an exact answer: wrong
    ]
    scored = score_rows(bench, geometry_rows, responses)
    for row, response, record in zip(geometry_rows, responses, scored, strict=True):
        reward = math_reward(response, row["answer"])
        assert record["correct"] == bool(reward["accuracy"])
        assert record["extracted"] == reward["extracted"]
    assert [r["correct"] for r in scored] == [True, False]
    summary = bench.summarise(scored)
    assert summary["headline"] == {"accuracy": 0.5} and summary["breakdowns"] == {}
    # "the answer is 5" is not boxed: the training reward gives 0, so does the benchmark
    assert bench.score(geometry_rows[0], "the answer is 5")["correct"] is False
