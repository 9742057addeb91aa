"""Summary tables (rich): one row per model and one column per benchmark metric, like the
paper's Table 1, plus per-benchmark breakdown tables with the models side by side.

Input everywhere is ``{model: {bench: summary}}`` where ``summary`` is what
``Benchmark.summarise`` returns (or its ``summary.json`` read back).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Summaries = Mapping[str, Mapping[str, Mapping[str, Any]]]
DASH = "–"


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal ("45.3"), or a dash."""
    return DASH if value is None else f"{100 * value:.1f}"


def columns(summaries: Summaries) -> list[tuple[str, str]]:
    """(bench, headline metric) pairs, in the order benchmarks and metrics first appear."""
    seen: dict[tuple[str, str], None] = {}
    for by_bench in summaries.values():
        for bench, summary in by_bench.items():
            for metric in summary.get("headline", {"accuracy": None}):
                seen.setdefault((bench, metric), None)
    return list(seen)


def average(by_bench: Mapping[str, Mapping[str, Any]], benches: list[str]) -> float | None:
    """Mean of each benchmark's first headline metric; None unless the model has all of them
    (a split without public answers has none)."""
    values = []
    for bench in benches:
        headline = by_bench.get(bench, {}).get("headline")
        value = next(iter(headline.values()), None) if headline else None
        if value is None:
            return None
        values.append(value)
    return sum(values) / len(values) if values else None


def results_table(summaries: Summaries, title: str = "Results (%)") -> Table:
    """Models as rows, benchmark headline metrics as columns (best per column in bold)."""
    pairs = columns(summaries)
    benches = list(dict.fromkeys(bench for bench, _ in pairs))
    table = Table(title=title)
    table.add_column("model", style="bold")
    metrics_of = {bench: sum(1 for b, _ in pairs if b == bench) for bench in benches}
    for bench, metric in pairs:
        header = bench if metrics_of[bench] == 1 else f"{bench}\n{metric}"
        table.add_column(header, justify="right")
    with_average = len(benches) > 1
    if with_average:
        table.add_column("avg", justify="right")
    values = {
        model: [by_bench.get(bench, {}).get("headline", {}).get(metric) for bench, metric in pairs]
        + ([average(by_bench, benches)] if with_average else [])
        for model, by_bench in summaries.items()
    }
    best = [
        max((row[i] for row in values.values() if row[i] is not None), default=None)
        for i in range(len(pairs) + with_average)
    ]
    for model, row in values.items():
        cells = [
            f"[bold]{percent(v)}[/bold]"
            if v is not None and v == best[i] and len(values) > 1
            else percent(v)
            for i, v in enumerate(row)
        ]
        table.add_row(model, *cells)
    return table


def breakdown_table(bench: str, key: str, summaries: Summaries) -> Table:
    """Accuracy per group of one breakdown (e.g. MathVista ``task``), models side by side."""
    table = Table(title=f"{bench}: accuracy by {key} (%)")
    table.add_column(key)
    groups: dict[str, None] = {}
    for by_bench in summaries.values():
        for group in by_bench.get(bench, {}).get("breakdowns", {}).get(key, {}):
            groups.setdefault(group, None)
    table.add_column("n", justify="right")
    for model in summaries:
        table.add_column(model, justify="right")
    for group in groups:
        cells, total = [], None
        for by_bench in summaries.values():
            entry = by_bench.get(bench, {}).get("breakdowns", {}).get(key, {}).get(group)
            cells.append(percent(entry["accuracy"]) if entry else DASH)
            total = total or (entry["total"] if entry else None)
        table.add_row(group, str(total or DASH), *cells)
    return table


def wemath_table(summaries: Summaries) -> Table:
    """We-Math's four dimensions (strict and loose) and step accuracies, models side by side."""
    table = Table(title="wemath: four-dimensional metrics (%)")
    table.add_column("metric")
    for model in summaries:
        table.add_column(model, justify="right")
    rows = [
        (f"{mode} {name}", (mode, name))
        for mode in ("strict", "loose")
        for name in ("score", "IK", "IG", "CM", "RM")
    ] + [(step, ("steps", step)) for step in ("S1", "S2", "S3")]
    for label, (section, name) in rows:
        cells = []
        for by_bench in summaries.values():
            summary = by_bench.get("wemath", {})
            block = summary.get("steps") if section == "steps" else None
            if block is None:
                block = summary.get("four_dimensional", {}).get(section, {})
            cells.append(percent(block.get(name)) if name in block else DASH)
        table.add_row(label, *cells)
    return table


def detail_tables(summaries: Summaries) -> list[Table]:
    """Every breakdown table of every benchmark present, plus We-Math's four dimensions."""
    tables: list[Table] = []
    benches = list(dict.fromkeys(b for by_bench in summaries.values() for b in by_bench))
    for bench in benches:
        if bench == "wemath":
            tables.append(wemath_table(summaries))
        keys: dict[str, None] = {}
        for by_bench in summaries.values():
            for key in by_bench.get(bench, {}).get("breakdowns", {}):
                keys.setdefault(key, None)
        tables.extend(breakdown_table(bench, key, summaries) for key in keys)
    return tables


def notes(summaries: Summaries) -> list[str]:
    """Each summary's ``note`` (e.g. a split scored without answers), once each."""
    found = (s.get("note") for by_bench in summaries.values() for s in by_bench.values())
    return list(dict.fromkeys(note for note in found if note))


def render(console: Console, summaries: Summaries, details: bool = False) -> None:
    """Print the results table and its notes, and with ``details`` every breakdown table."""
    console.print(results_table(summaries))
    for note in notes(summaries):
        console.print(f"note: {note}")
    if details:
        for table in detail_tables(summaries):
            console.print(table)


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> Path:
    """``summary.json`` (indented, UTF-8); returns its path."""
    path = Path(path)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def read_summary(path: str | Path) -> dict[str, Any]:
    """A ``summary.json`` written by ``write_summary``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
