"""Where datasets come from: the Hugging Face hub by id, or a local copy of the same columns.

Every loader in mgpo accepts a local path (a parquet/json/jsonl file, or a directory of them such
as a downloaded hub snapshot), because the hub is not always reachable. A directory's files of one
split are found the way the hub finds them:

1. the snapshot's ``README.md`` front matter, when it has a ``configs`` block (the dataset card's
   ``data_files`` patterns per config and split, exactly what ``load_dataset`` on the hub reads);
2. otherwise by file and folder names that mention the split (``test.parquet``,
   ``data/test-00000-of-00001.parquet``, ``test/...``);

and when several formats name the same split (We-Math ships ``testmini.json`` beside its parquet
file, MathVerse ``testmini.json`` beside ``testmini.parquet``), parquet is read, then jsonl, then
json: one table, never two copies of the same rows in different encodings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stages.errors import MgpoError

FILE_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}
# Which copy of a split to read when a snapshot holds it in several formats (best first).
FORMAT_PREFERENCE = (".parquet", ".jsonl", ".json")
SPLIT_ALIASES = {"validation": ("validation", "val", "dev"), "train": ("train",), "test": ("test",)}
README = "README.md"


def first_line(error: BaseException) -> str:
    """An exception as one line: its message's first line, else its class name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def one_format(files: list[Path]) -> list[Path]:
    """``files`` of the most preferred format among them (see ``FORMAT_PREFERENCE``)."""
    for suffix in FORMAT_PREFERENCE:
        chosen = [f for f in files if f.suffix == suffix]
        if chosen:
            return chosen
    return files


def readme_configs(root: Path) -> list[dict[str, Any]] | None:
    """The ``configs`` block of a snapshot's ``README.md`` front matter; None without one."""
    import yaml

    readme = root / README
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    end = text.find("\n---", 3)
    if not text.startswith("---") or end < 0:
        return None
    try:
        header = yaml.safe_load(text[3:end])
    except yaml.YAMLError as error:
        raise MgpoError(f"{readme}: front matter is not valid YAML ({first_line(error)})") from None
    configs = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(configs, list) or not configs:
        return None
    return [c for c in configs if isinstance(c, dict)]


def _split_patterns(data_files: Any) -> dict[str, list[str]]:
    """A config's ``data_files`` as split -> path patterns (a bare pattern or list means train)."""
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, dict):
        return {str(k): [v] if isinstance(v, str) else list(v) for k, v in data_files.items()}
    out: dict[str, list[str]] = {}
    for entry in data_files or []:
        if isinstance(entry, str):
            out.setdefault("train", []).append(entry)
        elif isinstance(entry, dict) and "path" in entry:
            path = entry["path"]
            out.setdefault(str(entry.get("split", "train")), []).extend(
                [path] if isinstance(path, str) else list(path)
            )
    return out


def config_files(root: Path, split: str, config: str | None = None) -> list[Path] | None:
    """The files of ``split`` that the snapshot's README ``configs`` block names, or None when
    the snapshot has no such block. ``config`` picks the config (default: ``default``, or the
    only one); a config or split the block does not list, or a pattern matching nothing, is an
    MgpoError naming the README."""
    configs = readme_configs(root)
    if configs is None:
        return None
    readme = root / README
    by_name = {str(c.get("config_name", "default")): c for c in configs}
    name = config or (
        "default" if "default" in by_name or len(by_name) != 1 else next(iter(by_name))
    )
    if name not in by_name:
        raise MgpoError(
            f"{readme}: no config '{name}' in its configs block (found: {', '.join(by_name)})"
        )
    patterns = _split_patterns(by_name[name].get("data_files"))
    if split not in patterns:
        raise MgpoError(
            f"{readme}: config '{name}' has no split '{split}' (found: {', '.join(patterns)})"
        )
    files = sorted(
        {p for pattern in patterns[split] for p in root.glob(pattern.lstrip("/")) if p.is_file()}
    )
    if not files:
        raise MgpoError(
            f"{readme}: split '{split}' is {', '.join(patterns[split])}, which matches no file"
        )
    return one_format(files)


def split_files(source: Path, split: str) -> list[Path]:
    """The data files of ``split`` under a directory: README ``configs`` first, else file or
    folder names that mention the split; one format (see the module docstring).

    A directory whose file names mention no split at all is taken as the split itself.
    """
    configured = config_files(source, split)
    if configured is not None:
        return configured
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
        return one_format(chosen)
    known = {a for names in SPLIT_ALIASES.values() for a in names}
    found = sorted({a for f in files for a in known if mentions(f, a)})
    if found:
        raise MgpoError(
            f"{source}: no files for split '{split}' (found splits: {', '.join(found)})"
        )
    return one_format(files)


def load_files(files: list[Path], where: str, split: str) -> Any:
    """One ``datasets`` table of local parquet/json/jsonl files of one format; any failure to
    read them is one MgpoError line naming ``where``."""
    import datasets

    datasets.utils.logging.disable_progress_bar()
    kinds = {FILE_FORMATS.get(f.suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise MgpoError(f"{where}: expected .parquet, .json or .jsonl files of one kind")
    kind = kinds.pop()
    if kind == "json":
        for file in files:
            check_json_text(file)
    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as error:  # datasets raises many kinds; all mean "this copy is unreadable"
        if _no_rows(files):  # datasets refuses an empty split with a cryptic message
            raise MgpoError(f"{where}: split '{split}' is empty (no rows)") from None
        raise MgpoError(f"{where}: could not read ({first_line(error)})") from None


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
            raise MgpoError(
                f"could not load {hub_id} (split {split}) from the hub: {first_line(error)}; "
                "pass --source PATH to use a local copy"
            ) from None
    path = Path(source)
    if not path.exists():
        raise MgpoError(f"--source {source}: no such file or directory")
    files = [path] if path.is_file() else split_files(path, split)
    return load_files(files, f"--source {source}", split)


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
