"""eval stage: benchmark loading, prompting, rule-based scoring and summaries (DESIGN.md §6).

What ``mgpo eval`` needs, end to end::

    bench = get_benchmark("mathvista")            # or resolve("all") for the paper's suite
    rows = bench.load(source=None, split=None, subset=None, limit=None)   # prompt rows
    responses = ...                               # generate (greedy) from row["prompt"], row["images"]
    scored = score_rows_timed(bench, rows, responses, judge=Judge(url) or None,
                              workers=K, timeout_s=10)   # eval shard rows, each item time-limited
    # (score_rows: the same in-process, no time limit; fine for tests and trusted responses)
    summary = bench.summarise(scored, split)      # JSON-able: headline, breakdowns, ...
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
from stages.eval.run import EvalOptions, run_eval
from stages.eval.summary import (
    average,
    columns,
    percent,
    read_summary,
    render,
    results_table,
    write_summary,
)
from stages.eval.timed import score_rows_timed

__all__ = [
    "ALL",
    "BENCHMARKS",
    "DEFAULT_TEMPLATE",
    "EvalOptions",
    "SUITE",
    "Benchmark",
    "Judge",
    "average",
    "columns",
    "percent",
    "get_benchmark",
    "read_summary",
    "render",
    "resolve",
    "run_eval",
    "results_table",
    "score_rows",
    "score_rows_timed",
    "scored_record",
    "write_summary",
]
