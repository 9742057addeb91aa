"""Geometry3K: the paper's training set (2,101 train / 300 validation / 601 test problems).

Three ways in: the hub copy ``hiyouga/geometry3k`` (columns ``images``, ``problem`` with an
``<image>`` placeholder, ``answer``; the current revision adds ``id``, ``choices`` and
``ground_truth``), a local copy of those columns as parquet/json/jsonl (a hub snapshot folder is
read through its README ``configs`` block), or the original Inter-GPS release (one folder per
problem holding ``data.json`` with ``problem_text``, ``choices`` and a letter ``answer``, plus
``img_diagram.png``), whose letter we map to choice text.

``choices`` are carried into the prompt rows as data. They do not make a letter answer count:
the ``math`` reward accepts ``\\boxed{B}`` for a choice only when the rendered prompt lists the
lettered choices (``stages.score.shown_choices``), which the default template does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.errors import MgpoError
from stages.sources import load_records, require_columns

HUB_ID = "hiyouga/geometry3k"
SPLITS = ("train", "validation", "test")
INTERGPS_SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}


def problems(source: str | None, split: str) -> Iterator[dict[str, Any]]:
    """Raw problems: ``{"problem", "answer", "images", "choices", "where", "base"}``."""
    if source is not None and is_intergps(Path(source)):
        yield from _intergps(Path(source), split)
        return
    records = load_records(HUB_ID, source, split)
    where = source or f"{HUB_ID}[{split}]"
    require_columns(records, ("images", "problem", "answer"), where)
    base = (
        Path(source).parent
        if source and Path(source).is_file()
        else (Path(source) if source else None)
    )
    # Rows are read as raw Arrow values: images stay ``{bytes, path}`` structs (or path strings)
    # that ``load_image`` opens with one clear error, instead of ``datasets`` decoding them and
    # raising PIL's own exception from inside its iterator.
    rows = (
        row
        for batch in records.with_format("arrow").iter(batch_size=64)
        for row in batch.to_pylist()
    )
    index = 0
    try:
        for index, record in enumerate(rows):
            meta = {"row": index}
            if record.get("id") is not None:  # the current hub revision numbers its problems
                meta["geometry3k_id"] = record["id"]
            yield {
                "problem": record["problem"],
                "answer": record["answer"],  # a null stays None (checked by the stage, not "None")
                "images": record["images"] or [],
                "choices": record.get("choices"),
                "where": f"{where} row {index}",
                "base": base,
                "meta": meta,
            }
    except (UnicodeDecodeError, OSError, ValueError) as error:  # text that is not UTF-8, ...
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise MgpoError(f"{where}: unreadable row at or after row {index} ({first})") from None


def is_intergps(path: Path) -> bool:
    return path.is_dir() and next(path.glob("**/data.json"), None) is not None


def _intergps(root: Path, split: str) -> Iterator[dict[str, Any]]:
    split_dir = root / INTERGPS_SPLIT_DIRS[split]
    if not split_dir.is_dir():
        if any((root / d).is_dir() for d in INTERGPS_SPLIT_DIRS.values()):
            raise MgpoError(
                f"{root}: Inter-GPS layout without a '{INTERGPS_SPLIT_DIRS[split]}' folder for split {split}"
            )
        split_dir = root  # the folder of one split's problems itself
    folders = sorted((p.parent for p in split_dir.glob("*/data.json")), key=_numeric_first)
    for folder in folders:
        where = str(folder / "data.json")
        try:
            data = json.loads((folder / "data.json").read_text())
        except ValueError as error:
            raise MgpoError(f"{where}: not valid JSON ({error})") from None
        for key in ("problem_text", "choices", "answer"):
            if key not in data:
                raise MgpoError(f"{where}: missing key '{key}'")
        choices = [str(c) for c in data["choices"]]
        letter = str(data["answer"]).strip().upper()
        index = ord(letter) - ord("A") if len(letter) == 1 else -1
        if not 0 <= index < len(choices):
            raise MgpoError(
                f"{where}: answer '{data['answer']}' is not a letter among {len(choices)} choices"
            )
        yield {
            "problem": "<image>" + str(data["problem_text"]),
            "answer": choices[index],
            "images": ["img_diagram.png"],  # relative to ``base``
            "choices": choices,
            "where": where,
            "base": folder,
            "meta": {"intergps_id": data.get("id", folder.name), "answer_letter": letter},
        }


def _numeric_first(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 60, path.name)
