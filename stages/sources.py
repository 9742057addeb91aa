"""Where datasets come from: the Hugging Face hub by id, or a local copy of the same columns.

Every loader in mgpo accepts a local path (a parquet/json/jsonl file, or a directory of them such
as a downloaded hub snapshot), because the hub is not always reachable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stages.errors import MgpoError

FILE_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}
SPLIT_ALIASES = {"validation": ("validation", "val", "dev"), "train": ("train",), "test": ("test",)}


def split_files(source: Path, split: str) -> list[Path]:
    """The data files of ``split`` under a directory (file or folder names mention the split).

    A directory whose file names mention no split at all is taken as the split itself.
    """
    files = sorted(p for p in source.rglob("*") if p.suffix in FILE_FORMATS and p.is_file())
    if not files:
        raise MgpoError(f"{source}: no .parquet, .json or .jsonl files found")

    def mentions(path: Path, name: str) -> bool:
        parts = [part.lower() for part in path.relative_to(source).parts]
        return any(
            p == name
            or p.startswith(f"{name}-")
            or p.startswith(f"{name}.")
            or p.startswith(f"{name}_")
            for p in parts
        )

    aliases = SPLIT_ALIASES.get(split, (split,))
    chosen = [f for f in files if any(mentions(f, a) for a in aliases)]
    if chosen:
        return chosen
    known = {a for names in SPLIT_ALIASES.values() for a in names}
    found = sorted({a for f in files for a in known if mentions(f, a)})
    if found:
        raise MgpoError(
            f"{source}: no files for split '{split}' (found splits: {', '.join(found)})"
        )
    return files


def load_records(
    hub_id: str, source: str | None, split: str, *, config: str | None = None
) -> Iterable[dict[str, Any]]:
    """Rows of a dataset split, from the hub (``source`` None) or from local files."""
    import datasets

    datasets.utils.logging.disable_progress_bar()
    if source is None:
        try:
            return datasets.load_dataset(hub_id, config, split=split)
        except Exception as error:  # the hub raises many kinds; all mean "not available"
            first = str(error).splitlines()[0] if str(error) else error.__class__.__name__
            raise MgpoError(
                f"could not load {hub_id} (split {split}) from the hub: {first}; "
                "pass --source PATH to use a local copy"
            ) from None
    path = Path(source)
    if not path.exists():
        raise MgpoError(f"--source {source}: no such file or directory")
    files = [path] if path.is_file() else split_files(path, split)
    kinds = {FILE_FORMATS.get(f.suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise MgpoError(f"--source {source}: expected .parquet, .json or .jsonl files of one kind")
    kind = kinds.pop()
    if kind == "json":
        for file in files:
            check_json_text(file)
    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as error:
        if _no_rows(files):  # datasets refuses an empty split with a cryptic message
            raise MgpoError(f"--source {source}: split '{split}' is empty (no rows)") from None
        first = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise MgpoError(f"--source {source}: could not read ({first})") from None


def check_json_text(file: Path) -> None:
    """One line naming the file and line of the first text that is not UTF-8 or not JSON.

    ``datasets`` reports neither well: it reads invalid UTF-8 into strings that fail only when a
    row is used, and a broken line comes back without its number."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise MgpoError(
            f"{file} line {line}: not UTF-8 text (byte {data[error.start]:#04x} at column {column})"
        ) from None
    if file.suffix == ".json":
        try:
            json.loads(text)
            return
        except ValueError:
            pass  # maybe JSON Lines in a .json file: checked line by line below
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                raise MgpoError(
                    f"{file} line {number}: not valid JSON ({error.msg}, column {error.colno})"
                ) from None


def _no_rows(files: list[Path]) -> bool:
    """True when every file is readable and holds no rows (parquet footer, or blank/``[]`` json)."""
    import pyarrow.parquet as pq

    for file in files:
        try:
            if file.suffix == ".parquet":
                if pq.ParquetFile(file).metadata.num_rows:
                    return False
            else:
                with open(file, encoding="utf-8") as handle:
                    if handle.read(4096).strip() not in ("", "[]"):
                        return False
        except Exception:
            return False
    return True


def require_columns(records: Any, columns: Iterable[str], where: str) -> None:
    """One clear line if the loaded table lacks a column we need."""
    present = set(getattr(records, "column_names", None) or [])
    for column in columns:
        if column not in present:
            raise MgpoError(
                f"{where}: missing column '{column}' (found: {', '.join(sorted(present)) or 'none'})"
            )
