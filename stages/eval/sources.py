"""Raw benchmark records from the Hugging Face hub or a local copy (``--source``), and their images.

Reading goes through ``stages.sources.load_records`` (hub by id, or local parquet/json/jsonl
files with the hub's columns, one file or a directory of them). On top of it, this module knows a
benchmark's own split names (``testmini``, ``test``) and picks a directory's files by them
(``testmini.parquet``, ``testmini-00000-of-00001.parquet``, ``testmini/...``); files of other
splits but none of the one asked for is an error rather than the directory being read whole.
Images may be Hugging Face image structs ``{bytes, path}``, PIL images, raw bytes, or paths
relative to the source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from stages.errors import MgpoError
from stages.images import load_image
from stages.sources import FILE_FORMATS, load_records


@dataclass(frozen=True)
class Records:
    """Raw records, their positions in the full split, and where relative image paths start."""

    rows: list[dict[str, Any]]
    indices: list[int]
    base: Path | None


def _names_split(path: Path, root: Path, split: str) -> bool:
    parts = [part.lower() for part in path.relative_to(root).parts]
    stem = Path(parts[-1]).stem
    return split in parts[:-1] or stem == split or stem.startswith(f"{split}-")


def split_files(source: Path, split: str, splits: Sequence[str]) -> list[Path] | None:
    """The files of ``split`` in a directory, by the benchmark's own split names.

    None when no file names any of the benchmark's splits (the directory is the split);
    MgpoError when files name other splits but not this one. Exact names only, so MathVerse's
    ``testmini_text_only.parquet`` is not mistaken for ``testmini``.
    """
    files = sorted(p for p in source.rglob("*") if p.suffix in FILE_FORMATS and p.is_file())
    named = {s: [f for f in files if _names_split(f, source, s)] for s in splits}
    if not any(named.values()):
        return None
    if not named.get(split):
        found = ", ".join(s for s, f in named.items() if f)
        raise MgpoError(f"--source {source}: no files for split '{split}' (found: {found})")
    return named[split]


def read(
    hub_id: str,
    config: str | None,
    source: str | Path | None,
    split: str,
    splits: Sequence[str],
    keep: Callable[[dict[str, Any]], bool] | None = None,
    filter_column: str | None = None,
    limit: int | None = None,
) -> Records:
    """Records of one split, filtered by ``keep`` on ``filter_column`` before images decode."""
    files = None
    if source is not None:
        path = Path(source).expanduser()
        if not path.exists():
            raise MgpoError(f"--source {source}: no such file or directory")
        files = split_files(path, split, splits) if path.is_dir() else None
    if files:
        import datasets

        parts = [load_records(hub_id, str(f), split, config=config) for f in files]
        dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    else:
        source_text = None if source is None else str(source)
        dataset = load_records(hub_id, source_text, split, config=config)
    if keep is not None and filter_column is not None:
        if filter_column not in dataset.column_names:
            raise MgpoError(
                f"{source or hub_id}: missing column '{filter_column}' to select a subset"
            )
        column = dataset.select_columns([filter_column])
        indices = [i for i, record in enumerate(column) if keep(record)]
    else:
        indices = list(range(len(dataset)))
    if limit is not None:
        indices = indices[:limit]
    base = None
    if source is not None:
        path = Path(source)
        base = path.parent if path.is_file() else path
    return Records([dataset[i] for i in indices], indices, base)


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
