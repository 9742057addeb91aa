"""The report stage's entry function: run directories -> ``OUT/index.html``, ``results.md``, PNGs.

Output is built in a hidden sibling folder and renamed into place, so ``OUT`` is either the old
report or the complete new one, never half of each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from stages.config import PositiveInt, check_values
from stages.errors import MgpoError
from stages.outputs import check_writable
from stages.report.html import html_report
from stages.report.markdown import markdown_report
from stages.report.plots import X_LABELS, Plot, make_plots, require_matplotlib
from stages.report.runs import Run, read_runs
from stages.report.tables import Table, eval_table, final_table


@dataclass(frozen=True)
class ReportOptions:
    runs: tuple[str, ...]
    out: str = "report"
    smooth: PositiveInt = 1  # moving-average window in points; 1 = raw values
    x: str = "step"  # "step" or "tokens" (cumulative response tokens trained)
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_values(self, flags={})


@dataclass
class Report:
    """What was written and from what (tests read the plotted data from here)."""

    out: Path
    runs: list[Run]
    plots: list[Plot]
    final: Table
    evaluation: Table
    problems: list[str] = field(default_factory=list)


def check_options(options: ReportOptions) -> Path:
    """Refuse bad options before anything is read or written; returns the output folder."""
    if not options.runs:
        raise MgpoError("no run directory given")
    if options.x not in X_LABELS:
        raise MgpoError(f"--x {options.x}: expected one of {', '.join(X_LABELS)}")
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise MgpoError(f"--out {out}: exists and is not a folder")
    resolved = out.resolve()
    for run in options.runs:
        run_path = Path(run).resolve()
        if resolved == run_path or resolved in run_path.parents:
            raise MgpoError(f"--out {out}: would replace run {run} (choose another folder)")
    if out.is_dir() and any(out.iterdir()) and not options.overwrite:
        raise MgpoError(f"--out {out}: exists and is not empty (pass --overwrite to replace it)")
    check_writable(out, "--out", beside=True)
    return out


def _install(staged: Path, out: Path) -> None:
    """Swap the finished folder into place (the old one is removed only after the swap)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staged.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_report(options: ReportOptions) -> Report:
    """Read the runs, draw the plots, write the page and the tables; MgpoError if no run is usable."""
    out = check_options(options)
    require_matplotlib()
    runs, problems = read_runs(list(options.runs))
    if not runs:
        raise MgpoError("no usable run: " + "; ".join(problems))
    plots, notes = make_plots(runs, options.x, options.smooth)
    problems += notes
    final, evaluation = final_table(runs), eval_table(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staged.chmod(0o777 & ~umask)  # mkdtemp makes it private; a report is an ordinary folder
        (staged / "plots").mkdir()
        for plot in plots:
            (staged / "plots" / f"{plot.name}.png").write_bytes(plot.png)
        page = html_report(runs, plots, final, evaluation, problems, options.x, options.smooth)
        (staged / "index.html").write_text(page, encoding="utf-8")
        text = markdown_report(final, evaluation, options.x, options.smooth)
        (staged / "results.md").write_text(text, encoding="utf-8")
        if problems:
            (staged / "problems.txt").write_text("\n".join(problems) + "\n", encoding="utf-8")
        _install(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return Report(out, runs, plots, final, evaluation, problems)
