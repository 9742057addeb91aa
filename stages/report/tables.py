"""The report's two tables as plain cells (rendered by ``markdown`` and ``html``).

- final numbers: one row per run, the last logged value of the headline training metrics and the
  best validation accuracy (with its step);
- evaluation: the paper's Table 1 layout (runs as rows, benchmark headline metrics as columns in
  percent, an average column when there are several benchmarks, the best of each column marked),
  built with the eval stage's own column and average rules so both tables read the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stages.report.runs import Run, best_value, final_value

DASH = "–"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    best: list[list[bool]] = field(default_factory=list)  # per cell: best in its column

    def __bool__(self) -> bool:
        return bool(self.rows)


def _fmt(digits: int) -> Callable[[float], str]:
    return lambda value: f"{value:.{digits}f}"


def _final(key: str, digits: int) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        found = final_value(run, key)
        return DASH if found is None else _fmt(digits)(found[0])

    return cell


def _best(key: str, digits: int) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        found = best_value(run, key)
        return DASH if found is None else f"{_fmt(digits)(found[0])} @{found[1]}"

    return cell


def _mean(key: str, digits: int) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        values = [row[key] for row in run.rows if key in row]
        return DASH if not values else _fmt(digits)(sum(values) / len(values))

    return cell


# Column header -> cell of a run (last value unless the header says otherwise).
FINAL_COLUMNS: dict[str, Callable[[Run], str]] = {
    "steps": lambda run: str(run.last_step),
    "reward": _final("reward_mean", 3),
    "accuracy": _final("accuracy", 3),
    "val accuracy": _final("val_accuracy", 3),
    "best val accuracy @step": _best("val_accuracy", 3),
    "response length": _final("response_length_mean", 1),
    "entropy": _final("entropy", 3),
    "IW spread": _final("ratio_spread", 3),
    "step time (mean s)": _mean("step_time_s", 2),
}


def final_table(runs: list[Run]) -> Table:
    """Final (last logged) numbers of every run."""
    table = Table(["run", *FINAL_COLUMNS])
    for run in runs:
        table.rows.append([run.label, *(cell(run) for cell in FINAL_COLUMNS.values())])
        table.best.append([False] * len(table.headers))
    return table


def eval_summaries(runs: list[Run]) -> dict[str, dict[str, dict]]:
    """``{row name: {bench: summary}}``: the run label, plus the model tag when a run has several."""
    out: dict[str, dict[str, dict]] = {}
    for run in runs:
        for tag, by_bench in run.summaries.items():
            name = run.label if len(run.summaries) == 1 else f"{run.label} · {tag}"
            out[name] = dict(by_bench)
    return out


def eval_table(runs: list[Run]) -> Table:
    """Table 1: runs x benchmark headline metrics (%), average when several benchmarks."""
    summaries = eval_summaries(runs)
    if not summaries:
        return Table(["run"])
    from stages.eval import average, columns, percent

    pairs = columns(summaries)
    benches = list(dict.fromkeys(bench for bench, _ in pairs))
    per_bench = {bench: sum(1 for b, _ in pairs if b == bench) for bench in benches}
    headers = ["run"] + [b if per_bench[b] == 1 else f"{b} {m}" for b, m in pairs]
    with_average = len(benches) > 1
    if with_average:
        headers.append("avg")
    values = {
        name: [by_bench.get(b, {}).get("headline", {}).get(m) for b, m in pairs]
        + ([average(by_bench, benches)] if with_average else [])
        for name, by_bench in summaries.items()
    }
    width = len(headers) - 1
    best = [
        max((row[i] for row in values.values() if row[i] is not None), default=None)
        for i in range(width)
    ]
    table = Table(headers)
    for name, row in values.items():
        table.rows.append([name, *(percent(v) for v in row)])
        table.best.append(
            [False]
            + [v is not None and v == best[i] and len(values) > 1 for i, v in enumerate(row)]
        )
    return table
