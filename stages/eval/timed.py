"""Scoring many eval items under a hard per-item time limit, through the score stage's runner.

``Benchmark.score`` compares answers with math-verify without a time limit (as the training
reward does), so one pathological response (``9^{9^{9}}``) could stall a whole evaluation.
``score_rows_timed`` hands every item to ``stages.score.score_items`` with ``score_item`` below
as the reward function: each item is scored in a worker process that is killed at its deadline,
and a killed item counts wrong with ``via="timeout"``. The judge (a network call) stays in the
parent and is asked only about items whose rules found no answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stages.eval.benchmark import AnswerJudge, Benchmark, Row, meta_of, scored_record

# ``FILE.py:FN`` spec of ``score_item`` for the score runner (its workers import it by path).
SPEC = f"{Path(__file__).resolve()}:score_item"


def score_item(
    response: str,
    answer: str,
    *,
    benchmark: str,
    meta: str,
    choices: list[str] | None = None,
    prompt_id: str | None = None,
    prompt: str | None = None,
    **_fields: Any,
) -> dict[str, float | str]:
    """One item, as the score runner calls a reward function: reward = 1.0 when correct."""
    from stages.eval.registry import get_benchmark

    row = {
        "id": prompt_id,
        "prompt": prompt,
        "answer": answer,
        "choices": choices,
        "meta": json.loads(meta),
    }
    result = get_benchmark(benchmark).score(row, response)
    return {
        "reward": float(result["correct"]),
        "ruled": float(result["via"] == "rule"),
        "extracted": result["extracted"],
    }


def _items(
    bench: Benchmark, rows: Sequence[Row], responses: Sequence[str], samples: Sequence[int]
) -> Iterator[dict[str, Any]]:
    for row, response, sample in zip(rows, responses, samples, strict=True):
        yield {
            "prompt_id": row["id"],
            "sample": sample,
            "response": response,
            "answer": row["answer"],
            "benchmark": bench.name,
            "meta": json.dumps(meta_of(row), ensure_ascii=False, default=str),
            "choices": row.get("choices"),
            "prompt": row.get("prompt"),
        }


def _result(
    bench: Benchmark, row: Row, response: str, scored: Mapping[str, Any], judge: AnswerJudge | None
) -> dict[str, Any]:
    if scored["timed_out"]:
        return {"correct": False, "extracted": "", "via": "timeout", "normalised": ""}
    if scored["ruled"]:
        correct = scored["reward"] == 1.0
        return {
            "correct": correct,
            "extracted": scored["extracted"],
            "via": "rule",
            "normalised": "",
        }
    if judge is not None:  # rules found nothing: only the judge's short answer is compared here
        return bench.score(row, response, judge)
    return {"correct": False, "extracted": "", "via": "none", "normalised": ""}


def score_rows_timed(
    bench: Benchmark,
    rows: Sequence[Row],
    responses: Sequence[str],
    *,
    judge: AnswerJudge | None = None,
    samples: Sequence[int] | None = None,
    workers: int = 1,
    timeout_s: float = 10.0,
) -> list[Row]:
    """Like ``score_rows``, each item in a worker process killed after ``timeout_s`` seconds.

    Records have the same columns as ``score_rows`` gives (``normalised`` is empty: workers
    return numbers and the extracted answer only).
    """
    from stages.score import score_items

    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
    samples = list(samples) if samples is not None else [0] * len(rows)
    results = score_items(
        _items(bench, rows, responses, samples), SPEC, workers=workers, timeout_s=timeout_s
    )
    return [
        scored_record(row, response, _result(bench, row, response, scored, judge), sample)
        for row, response, sample, scored in zip(rows, responses, samples, results, strict=True)
    ]
