"""report stage: training runs (and the evals inside them) -> plots, an HTML page, tables.

report = run_report(ReportOptions(runs=("runs/mgpo", "runs/grpo"), out="report", smooth=5))
report.plots[0].series     # the exact data each figure shows
# writes report/index.html (self-contained), report/results.md, report/plots/*.png
"""

from stages.report.run import Report, ReportOptions, run_report

__all__ = ["Report", "ReportOptions", "run_report"]
