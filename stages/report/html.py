"""A self-contained HTML page: plots as base64 data URIs, tables, each run's config, problems.

Nothing is fetched when the page opens (no scripts, fonts or stylesheets from elsewhere), so it
can be mailed or attached to an issue as one file. Every text from a run (labels, paths, config
values) is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
from html import escape

from stages.report.plots import QUANTITIES, Plot
from stages.report.runs import Run
from stages.report.tables import Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px; }
.problems li { color: #a33; }
"""


def html_table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = []
    for row, best in zip(table.rows, table.best, strict=True):
        cells = []
        for i, (text, bold) in enumerate(zip(row, best, strict=True)):
            content = f"<b>{escape(text)}</b>" if bold else escape(text)
            cells.append(f'<td class="num">{content}</td>' if i else f"<td>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure id="plot-{escape(plot.name)}"><img alt="{escape(plot.title)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{escape(plot.title)}</figcaption></figure>'
    )


def html_report(
    runs: list[Run],
    plots: list[Plot],
    final: Table,
    evaluation: Table,
    problems: list[str],
    x: str,
    smooth: int,
) -> str:
    """The whole page as one string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>mgpo report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>mgpo report</h1>",
        f"<p>{len(runs)} run(s); x = {escape(x)}; moving average over {smooth} point(s).</p>",
    ]
    if problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in problems)
        parts.append(f'<h2>Problems (skipped)</h2><ul class="problems">{items}</ul>')
    parts += ["<h2>Training (last logged values)</h2>", html_table(final)]
    if evaluation:
        parts += ["<h2>Evaluation (%)</h2>", html_table(evaluation)]
    parts.append("<h2>Plots</h2>")
    plotted = {plot.name for plot in plots}
    absent = [", ".join(q.keys) for name, q in QUANTITIES.items() if name not in plotted]
    if absent:
        parts.append(f"<p>Not plotted (no run logs them): {escape('; '.join(absent))}.</p>")
    parts += [figure(plot) for plot in plots]
    parts.append("<h2>Configs</h2>")
    for run in runs:
        config = json.dumps(run.config, indent=2, ensure_ascii=False, default=str)
        parts.append(
            f"<details><summary>{escape(run.label)} — <code>{escape(str(run.path))}</code>"
            f"</summary><pre>{escape(config)}</pre></details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
