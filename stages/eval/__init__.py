"""eval stage: benchmark loading, prompting, rule-based scoring and summaries (DESIGN.md §6).

What ``mgpo eval`` needs, end to end::

    bench = get_benchmark("mathvista")            # or resolve("all") for the paper's suite
    rows = bench.load(source=None, split=None, subset=None, limit=None)   # prompt rows
    responses = ...                               # generate (greedy) from row["prompt"], row["images"]
    scored = score_rows(bench, rows, responses, judge=Judge(url) or None)  # eval shard rows
    summary = bench.summarise(scored)             # JSON-able: headline, breakdowns, ...
    render(console, {model_name: {bench.name: summary}})
"""

from stages.eval.benchmark import (
    DEFAULT_TEMPLATE,
    Benchmark,
    score_rows,
    scored_record,
)
from stages.eval.judge import Judge
from stages.eval.registry import ALL, BENCHMARKS, SUITE, get_benchmark, resolve
from stages.eval.summary import read_summary, render, results_table, write_summary

__all__ = [
    "ALL",
    "BENCHMARKS",
    "DEFAULT_TEMPLATE",
    "SUITE",
    "Benchmark",
    "Judge",
    "get_benchmark",
    "read_summary",
    "render",
    "resolve",
    "results_table",
    "score_rows",
    "scored_record",
    "write_summary",
]
