"""``mgpo report``: plots, an HTML page and tables from one or more training run directories."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.console import console


def report(
    runs: list[Path] = typer.Argument(
        ...,
        help="Run directories written by mgpo train (eval results inside them are found).",
        show_default=False,
        metavar="RUN",
    ),
    out: Path = typer.Option(
        Path("report"), help="Output folder: index.html, results.md, plots/*.png."
    ),
    smooth: int = typer.Option(1, help="Moving-average window in points (1: the raw values)."),
    x: str = typer.Option(
        "step", "--x", help="X axis: step, or tokens (cumulative response tokens trained)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Compare training runs: one plot per metric with every run overlaid, an HTML page and a
    Markdown table of final numbers (plus the eval summaries found in the runs, as Table 1).

    A run that cannot be read is named and skipped; the command fails only when none can be.
    """
    from stages.report import ReportOptions, run_report

    result = run_report(
        ReportOptions(
            runs=tuple(str(r) for r in runs),
            out=str(out),
            smooth=smooth,
            x=x,
            overwrite=overwrite,
        )
    )
    for problem in result.problems:
        console.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]report written to {result.out}[/]: index.html, results.md, "
        f"{len(result.plots)} plots from {len(result.runs)} run(s)",
        highlight=False,
    )
