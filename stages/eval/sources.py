"""Raw benchmark records from the Hugging Face hub or a local copy (``--source``), and their images.

Reading goes through ``stages.sources`` (hub by id, or local parquet/json/jsonl files with the
hub's columns, one file or a directory of them). A directory is read as a hub snapshot: its
README ``configs`` block when it has one (MathVista, MathVerse, MATH-Vision, Geometry3K), else
the files named after the benchmark's own split names (``testmini.parquet``,
``testmini-00000-of-00001.parquet``, ``testmini/...``; We-Math), one format only (parquet before
json: MathVerse and We-Math keep a ``testmini.json`` beside the parquet file). Files of other
splits but none of the one asked for is an error rather than the directory being read whole.
Images may be Hugging Face image structs ``{bytes, path}``, PIL images, raw bytes, or paths
relative to the source. Every failure to read is one ``MgpoError`` line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from stages.errors import MgpoError
from stages.images import load_image
from stages.sources import (
    FILE_FORMATS,
    config_files,
    first_line,
    load_files,
    load_records,
    one_format,
)


def _names_split(path: Path, root: Path, split: str) -> bool:
    parts = [part.lower() for part in path.relative_to(root).parts]
    stem = Path(parts[-1]).stem
    return split in parts[:-1] or stem == split or stem.startswith(f"{split}-")


def split_files(
    source: Path, split: str, splits: Sequence[str], config: str | None = None
) -> list[Path] | None:
    """The files of ``split`` in a directory: the README ``configs`` block's, else those named
    by the benchmark's own split names, in one format.

    None when there is no configs block and no file names any of the benchmark's splits (the
    directory is the split); MgpoError when files name other splits but not this one. Exact
    names only, so MathVerse's ``testmini_text_only.parquet`` is not mistaken for ``testmini``.
    """
    configured = config_files(source, split, config)
    if configured is not None:
        return configured
    files = sorted(p for p in source.rglob("*") if p.suffix in FILE_FORMATS and p.is_file())
    named = {s: [f for f in files if _names_split(f, source, s)] for s in splits}
    if not any(named.values()):
        return None
    if not named.get(split):
        found = ", ".join(s for s, f in named.items() if f)
        raise MgpoError(f"--source {source}: no files for split '{split}' (found: {found})")
    return one_format(named[split])


def open_split(
    hub_id: str, config: str | None, source: str | Path | None, split: str, splits: Sequence[str]
) -> tuple[Any, Path | None]:
    """The split as a ``datasets`` table, and the folder relative image paths start from."""
    if source is None:
        return load_records(hub_id, None, split, config=config), None
    path = Path(source).expanduser()
    if not path.exists():
        raise MgpoError(f"--source {source}: no such file or directory")
    files = split_files(path, split, splits, config) if path.is_dir() else None
    if files:
        dataset = load_files(files, f"--source {source}", split)
    else:
        dataset = load_records(hub_id, str(path), split, config=config)
    return dataset, (path.parent if path.is_file() else path)


def column_values(dataset: Any, name: str, where: str, purpose: str) -> list[Any]:
    """One column's values (its name matched case-insensitively), without decoding images."""
    names = {n.lower(): n for n in dataset.column_names}
    found = name if name in dataset.column_names else names.get(name.lower())
    if found is None:
        raise MgpoError(f"{where}: missing column '{name}' to {purpose}")
    return dataset.data.column(found).to_pylist()


def select(
    dataset: Any,
    where: str,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    filter_column: str | None = None,
    limit: int | None = None,
    unit_column: str | None = None,
) -> list[int]:
    """Positions of the rows to read: those ``keep`` accepts (judged on ``filter_column`` alone,
    before any image decodes), then the first ``limit`` of them, or, with ``unit_column``, every
    row of the first ``limit`` distinct values of that column (whole units, in file order)."""
    indices = list(range(len(dataset)))
    if keep is not None and filter_column is not None:
        values = column_values(dataset, filter_column, where, "select a subset")
        indices = [i for i in indices if keep({filter_column: values[i]})]
    if limit is None:
        return indices
    if unit_column is None:
        return indices[:limit]
    units = column_values(dataset, unit_column, where, "count --limit in")
    chosen = set(list(dict.fromkeys(units[i] for i in indices))[:limit])
    return [i for i in indices if units[i] in chosen]


def read_rows(dataset: Any, indices: list[int], where: str) -> list[dict[str, Any]]:
    """The records at ``indices`` (images decoded by ``datasets``); failures are one line."""
    try:
        return [dataset[i] for i in indices]
    except Exception as error:  # a corrupt image or cell inside datasets' own decoding
        raise MgpoError(f"{where}: could not read its rows ({first_line(error)})") from None


def to_image(value: Any, base: Path | None, where: str) -> Image.Image:
    """An RGB PIL image from a PIL image, an HF image struct, raw bytes or a (relative) path."""
    return load_image(value, base, where).convert("RGB")


def first_present(record: dict[str, Any], names: Sequence[str]) -> Any:
    """The first of ``names`` with a non-empty value in ``record`` (column case may vary)."""
    lowered = {key.lower(): key for key in record}
    for name in names:
        key = name if name in record else lowered.get(name.lower())
        if key is not None and record[key] not in (None, "", []):
            return record[key]
    return None
