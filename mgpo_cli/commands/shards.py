"""``mgpo shards DIR``: look inside a shard set without writing code."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from stages.console import Console
from stages.shards import open_shards


def _cell(value, width: int = 60) -> str:
    """A short, printable rendering of one cell (images as their size, long text cut)."""
    if isinstance(value, dict) and "bytes" in value:
        return f"<image {len(value['bytes'] or b'')} B>"
    if isinstance(value, list):
        if value and isinstance(value[0], dict) and "bytes" in value[0]:
            return f"[{len(value)} image(s)]"
        text = json.dumps(value)
        return text if len(text) <= width else f"[{len(value)} items] {text[: width - 12]}…"
    text = str(value).replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def shards(
    directory: Path = typer.Argument(..., help="A shard set directory (holds manifest.json)."),
    rows: int = typer.Option(3, "--rows", "-n", help="How many sample rows to show."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Re-hash every part and compare with the manifest (reads every byte).",
    ),
) -> None:
    """Summarise a shard set: kind, rows, columns, manifest and a few sample rows."""
    shard_set = open_shards(directory)
    if verify:
        shard_set.verify()
    out = Console()
    manifest = shard_set.manifest
    out.print(
        f"[bold]{directory}[/]  kind=[cyan]{shard_set.kind}[/]  rows=[cyan]{shard_set.num_rows}[/]"
        f"  parts={len(shard_set.files)}  schema v{manifest.get('schema_version')}"
    )
    producer = manifest.get("producer", {})
    out.print(f"producer: {producer.get('command', '?')}   created: {manifest.get('created', '?')}")
    out.print(
        f"content sha256: {manifest.get('content_sha256', '?')}"
        + ("  [green](verified)[/]" if verify else "")
    )
    columns = Table(title="columns", show_lines=False)
    columns.add_column("name")
    columns.add_column("type")
    for field in shard_set.schema:
        columns.add_row(field.name, str(field.type))
    out.print(columns)
    if rows > 0:
        sample = Table(title=f"first {rows} rows", show_lines=True)
        names = [f.name for f in shard_set.schema]
        for name in names:
            sample.add_column(name, overflow="fold")
        for i, row in enumerate(shard_set.iter_rows(batch_size=max(rows, 1))):
            if i >= rows:
                break
            sample.add_row(*(_cell(row[name]) for name in names))
        out.print(sample)
