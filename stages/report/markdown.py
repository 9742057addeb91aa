"""The report's tables as GitHub-flavoured Markdown, for pasting into papers and issues."""

from __future__ import annotations

from stages.report.tables import Table


def _cell(text: str, bold: bool) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if bold else text


def markdown_table(table: Table) -> str:
    """Header, alignment row (numbers right-aligned) and one line per row."""
    lines = [
        "| " + " | ".join(_cell(h, False) for h in table.headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(table.headers) - 1)) + "|",
    ]
    for row, best in zip(table.rows, table.best, strict=True):
        lines.append("| " + " | ".join(_cell(c, b) for c, b in zip(row, best, strict=True)) + " |")
    return "\n".join(lines)


def markdown_report(final: Table, evaluation: Table, x: str, smooth: int) -> str:
    """``results.md``: final training numbers, then the evaluation table when there is one."""
    parts = [
        "## Training (last logged values)",
        "",
        markdown_table(final),
        "",
        f"Plots: x = {x}, moving average over {smooth} point(s); tables use the logged values.",
    ]
    if evaluation:
        parts += ["", "## Evaluation (%)", "", markdown_table(evaluation)]
    return "\n".join(parts) + "\n"
