"""``mgpo prepare NAME``: a dataset split -> prompt shards."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from stages.console import Console


def _list_datasets() -> None:
    from stages.prepare import DATASETS

    table = Table(title="datasets for mgpo prepare")
    for column in ("name", "what", "source", "splits"):
        table.add_column(column, overflow="fold")
    for name, spec in sorted(DATASETS.items()):
        table.add_row(name, spec.description, spec.origin, ", ".join(spec.splits))
    Console().print(table)


def prepare(
    name: str = typer.Argument(
        None, help="Dataset name (see --list), e.g. geometry3k or shapes.", show_default=False
    ),
    source: Path = typer.Option(
        None,
        help="Local copy instead of the hub: parquet/json/jsonl file or folder (Geometry3K: also an Inter-GPS folder).",
    ),
    split: str = typer.Option("train", help="Split to prepare: train, validation or test."),
    out: Path = typer.Option(None, help="Output shard directory.  \\[default: data/NAME/SPLIT]"),
    template: str = typer.Option(
        None,
        help="Prompt template: a built-in name (math_think_boxed, short_answer, final_number) or a Jinja file seeing {{ problem }} and {{ choices }}.  \\[default: the dataset's]",
    ),
    min_pixels: int = typer.Option(
        None,
        help="Upscale smaller images to at least this many pixels.  \\[default: 262144 for geometry3k, none for shapes]",
    ),
    max_pixels: int = typer.Option(
        None,
        help="Downscale larger images to at most this many pixels.  \\[default: 4194304 for geometry3k]",
    ),
    limit: int = typer.Option(None, help="Keep only the first K problems."),
    seed: int = typer.Option(0, help="Seed of generated datasets (shapes, arithmetic)."),
    size: int = typer.Option(
        None,
        help="Number of generated items (shapes, arithmetic).  \\[default: 512 train, 64 validation, 128 test]",
    ),
    difficulty: str = typer.Option(
        "easy",
        help="Generated task difficulty: shapes colour|easy|medium|hard, arithmetic easy|medium|hard.",
    ),
    image_size: int = typer.Option(
        112,
        help="Side in pixels of generated images (shapes; 112 = 16 vision tokens of the tiny model).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing complete shard set."
    ),
    list_: bool = typer.Option(
        False, "--list", help="List known datasets with their sources and splits, then exit."
    ),
) -> None:
    """Turn a dataset split into prompt shards (Parquet, zstd, manifest written last)."""
    if list_:
        _list_datasets()
        return
    from stages.errors import MgpoError
    from stages.prepare import DIFFICULTIES, PrepareOptions, run_prepare

    if name is None:
        raise MgpoError("missing dataset NAME (see mgpo prepare --list)")
    if difficulty not in DIFFICULTIES:
        raise MgpoError(f"--difficulty {difficulty}: expected one of {', '.join(DIFFICULTIES)}")
    options = PrepareOptions(
        name=name,
        split=split,
        source=str(source) if source else None,
        out=str(out) if out else None,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        template=template,
        limit=limit,
        seed=seed,
        size=size,
        difficulty=difficulty,
        image_size=image_size,
        overwrite=overwrite,
    )
    written = run_prepare(options, command=f"mgpo prepare {name} --split {split}")
    Console().print(f"[green]prompts written to {written}[/]")
