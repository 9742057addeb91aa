"""Parquet shard sets: how stages hand work to each other (DESIGN.md §3).

A shard set is a directory of ``part-00000.parquet``, ``part-00001.parquet``, ... plus
``manifest.json``. The manifest is written last, so a directory without one is incomplete and is
never read. Writers build the set in a hidden staging directory beside the target
(``.NAME.partial``) and rename it into place only when it is whole: a killed stage leaves nothing a
later stage would mistake for finished work, and each part inside the staging directory is itself
written to a temporary name and renamed, so a resumed stage can trust every part it finds there.

Every data page carries a CRC that readers verify, so a flipped byte is an error naming the part,
column and rows, never silently wrong data; opening a set checks each part's row count (from its
footer, cheap) against the manifest; ``verify`` re-hashes every byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages import __version__
from stages.errors import MgpoError
from stages.images import prompt_row as prompt_row  # readers of prompt shards import it here
from stages.processes import SINGLE, Processes
from stages.schemas import KINDS, SCHEMA_VERSION, check_columns, with_hf_features

MANIFEST = "manifest.json"
PART_PATTERN = "part-{:05d}.parquet"


def staging_dir(out_dir: Path) -> Path:
    """Where an unfinished shard set lives until it is complete."""
    return out_dir.parent / f".{out_dir.name}.partial"


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ----------------------------------------------------------------------------------- writing


def encode_image(image: Any) -> dict[str, Any]:
    """A PIL image (or an existing ``{bytes, path}`` struct) as the Hugging Face image struct."""
    if isinstance(image, dict):
        return {"bytes": image.get("bytes"), "path": image.get("path")}
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if "images" in out and out["images"] is not None:
        out["images"] = [encode_image(image) for image in out["images"]]
    if isinstance(out.get("meta"), dict):
        out["meta"] = json.dumps(out["meta"], sort_keys=True)
    return out


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Write one shard set atomically.

    Use as a context manager. Rows go in with :meth:`add` (buffered into parts of
    ``rows_per_part``) or :meth:`write_part` (exactly one part, e.g. one batch of prompts so a
    resumed run can skip it). On a clean exit the manifest is written and the staging directory
    renamed onto ``out_dir``. On an exception the staging directory is removed, unless
    ``keep_partial`` is set (rollouts keep their finished parts for ``resume``).

    Several processes (``processes``, see :mod:`stages.processes`) build one set together: every
    process opens the writer (the main process prepares the staging directory first), writes the
    parts it owns by index (``write_part(rows, index=j)``: ``part-0000j.parquet``, so the set
    does not depend on which process wrote what), and closes it; the main process seals the set
    once all have reached ``close``. Each part is renamed into place whole, so a resumed run can
    skip every part it finds (``has_part``).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        kind: str,
        *,
        producer: dict[str, Any],
        schema: pa.Schema | None = None,
        rows_per_part: int = 1024,
        overwrite: bool = False,
        resume: bool = False,
        keep_partial: bool = False,
        processes: Processes = SINGLE,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown shard kind {kind!r}")
        self.out_dir = Path(out_dir)
        self.kind = kind
        self.producer = producer
        self.schema = with_hf_features(schema if schema is not None else KINDS[kind])
        self.rows_per_part = rows_per_part
        self.overwrite = overwrite
        self.keep_partial = keep_partial
        self.staging = staging_dir(self.out_dir)
        self._buffer: list[dict[str, Any]] = []
        self.processes = processes
        check_target(self.out_dir, overwrite=overwrite)  # every process: each fails alike
        # Parent folders this writer creates (e.g. data/NAME for data/NAME/SPLIT) go again on abort.
        self._created = [p for p in self.staging.parents if not p.exists()]
        if processes.is_main:  # the others join the staging directory once it is ready
            # A staged set is only resumed by the same producer settings; anything else starts
            # over.
            staged_by = self.staging / "producer.json"
            if self.staging.exists() and not (
                resume and _read_json(staged_by) == json.loads(json.dumps(producer, default=str))
            ):
                shutil.rmtree(self.staging)
            self.staging.mkdir(parents=True, exist_ok=True)
            write_json_atomic(staged_by, producer)
            for stale in self.staging.glob("*.tmp"):
                stale.unlink()
        processes.barrier()
        self._parts = sorted(self.staging.glob("part-*.parquet"))

    # The staged parts a resumed writer starts from.
    def existing_rows(self, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
        for part in self._parts:
            yield from read_part(part, list(columns)).to_pylist()

    def has_part(self, index: int) -> bool:
        """Whether part ``index`` is staged already (written whole, by any process)."""
        return (self.staging / PART_PATTERN.format(index)).is_file()

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._buffer.append(row)
            if len(self._buffer) >= self.rows_per_part:
                self.flush()

    def flush(self) -> None:
        if self._buffer:
            rows, self._buffer = self._buffer, []
            self.write_part(rows)

    def write_part(self, rows: Sequence[dict[str, Any]], index: int | None = None) -> Path:
        """Write ``rows`` as part ``index`` (default: the next one) under a temporary name, then
        rename it into place."""
        table = pa.Table.from_pylist([_normalise_row(r) for r in rows], schema=self.schema)
        path = self.staging / PART_PATTERN.format(len(self._parts) if index is None else index)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
        os.replace(tmp, path)
        self._parts.append(path)
        return path

    def close(self) -> Path:
        """Write the manifest and move the finished set into place (the main process, once every
        process has written its parts)."""
        self.flush()
        self.processes.barrier()
        if self.processes.is_main:
            self._seal()
        self.processes.barrier()
        return self.out_dir

    def _seal(self) -> None:
        self._parts = sorted(self.staging.glob("part-*.parquet"))  # every process's
        if not self._parts:  # an empty set still has one (empty) part, so its schema is readable
            self.write_part([])
        parts = [
            {"file": p.name, "rows": pq.ParquetFile(p).metadata.num_rows, "sha256": _file_sha256(p)}
            for p in self._parts
        ]
        content = hashlib.sha256("".join(p["sha256"] for p in parts).encode()).hexdigest()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "rows": sum(p["rows"] for p in parts),
            "columns": pq.read_schema(self._parts[0]).names,
            "parts": parts,
            "content_sha256": content,
            "producer": self.producer,
            "mgpo_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (self.staging / "producer.json").unlink(missing_ok=True)
        write_json_atomic(self.staging / MANIFEST, manifest)
        if self.out_dir.exists():
            trash = self.out_dir.parent / f".{self.out_dir.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.out_dir, trash)
            os.replace(self.staging, self.out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging, self.out_dir)

    def abort(self) -> None:
        if not self.keep_partial and self.processes.is_main:
            shutil.rmtree(self.staging, ignore_errors=True)
            for folder in self._created:  # innermost first; only while still empty
                try:
                    folder.rmdir()
                except OSError:
                    break

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_target(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to replace finished work unless told to, and never replace what is not shards.

    ``--overwrite`` deletes the old directory, so it only ever applies to a shard set: a directory
    holding anything else (a typo'd ``--out ~/thesis``) is refused even then.
    """
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise MgpoError(f"{out_dir}: exists and is not a directory")
    foreign = sorted(p.name for p in out_dir.iterdir() if not _is_shard_file(p.name))
    if foreign:
        raise MgpoError(
            f"{out_dir}: exists and is not a shard set (it holds {foreign[0]!r}); "
            "refusing to replace it, even with --overwrite: choose another output directory"
        )
    if is_complete(out_dir) and not overwrite:
        raise MgpoError(
            f"{out_dir}: already holds a complete shard set (pass --overwrite to replace it)"
        )


def _is_shard_file(name: str) -> bool:
    """A file a shard writer puts in a set: parts, the manifest, or their temporary names."""
    name = name.removesuffix(".tmp")
    return name in (MANIFEST, "producer.json") or (
        name.startswith("part-") and name.endswith(".parquet")
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_shards(
    out_dir: str | os.PathLike,
    kind: str,
    rows: Iterable[dict[str, Any]],
    *,
    producer: dict[str, Any],
    schema: pa.Schema | None = None,
    rows_per_part: int = 1024,
    overwrite: bool = False,
) -> Path:
    """Write all ``rows`` as one shard set; nothing is left behind if the iterator fails."""
    with ShardWriter(
        out_dir,
        kind,
        producer=producer,
        schema=schema,
        rows_per_part=rows_per_part,
        overwrite=overwrite,
    ) as writer:
        writer.add(rows)
    return Path(out_dir)


# ----------------------------------------------------------------------------------- reading

# What pyarrow raises for a damaged part: a failed page CRC, bad compression, a torn footer.
_READ_ERRORS = (OSError, pa.ArrowException)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _parquet(file: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file, page_checksum_verification=True)
    except _READ_ERRORS as error:
        raise MgpoError(f"{file}: not a readable Parquet file ({_first_line(error)})") from None


def _damaged(parquet: pq.ParquetFile, file: Path, columns, error: BaseException) -> MgpoError:
    """One line naming the part, the first unreadable column and its rows (found by reading
    each column of each row group on its own: only done once something failed)."""
    names = list(columns) if columns is not None else parquet.schema_arrow.names
    first = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        for name in names:
            try:
                parquet.read_row_group(group, columns=[name])
            except _READ_ERRORS as cause:
                return MgpoError(
                    f"{file}: damaged data in column '{name}', rows {first}-{first + rows - 1}"
                    f" ({_first_line(cause)}); write the shard set again"
                )
        first += rows
    return MgpoError(f"{file}: damaged Parquet data ({_first_line(error)})")


def read_part(file: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One part in memory, every page checked; damage is one line naming file, column, rows."""
    parquet = _parquet(file)
    try:
        return parquet.read(columns=columns)
    except _READ_ERRORS as error:
        raise _damaged(parquet, file, columns, error) from None


def _part_batches(
    file: Path, columns: Sequence[str] | None, batch_size: int
) -> Iterator[pa.RecordBatch]:
    parquet = _parquet(file)
    try:
        yield from parquet.iter_batches(batch_size=batch_size, columns=columns)
    except _READ_ERRORS as error:
        raise _damaged(parquet, file, columns, error) from None


@dataclass(frozen=True)
class ShardSet:
    """A complete, validated shard set. Reads stream part by part, batch by batch."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def num_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def files(self) -> list[Path]:
        return [self.path / part["file"] for part in self.manifest["parts"]]

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.files[0])

    def iter_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = 256
    ) -> Iterator[pa.RecordBatch]:
        for file in self.files:
            yield from _part_batches(file, columns, batch_size)

    def iter_rows(
        self, columns: Sequence[str] | None = None, batch_size: int = 256
    ) -> Iterator[dict]:
        for batch in self.iter_batches(columns, batch_size):
            yield from batch.to_pylist()

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole set in memory: only for sets known to be small (one training step)."""
        return pa.concat_tables(read_part(f, columns) for f in self.files)

    def where(self, row_id: str, column: str = "id") -> str:
        """``PART row R`` of the row whose ``column`` is ``row_id`` (for error messages)."""
        for part in self.manifest["parts"]:
            ids = read_part(self.path / part["file"], [column]).column(0).to_pylist()
            if row_id in ids:
                return f"{self.path / part['file']} row {ids.index(row_id)}"
        return f"{self.path} ({column} {row_id!r})"

    def verify(self) -> None:
        """Check every part against the manifest's hashes (slow: reads every byte)."""
        for part in self.manifest["parts"]:
            if _file_sha256(self.path / part["file"]) != part["sha256"]:
                raise MgpoError(f"{self.path / part['file']}: content does not match manifest.json")


def open_shards(path: str | os.PathLike, kind: str | None = None) -> ShardSet:
    """Open a complete shard set, checking the manifest, and every part's columns and row count
    (footers only: cheap)."""
    path = Path(path)
    staged = " (an unfinished run is staged beside it)" if staging_dir(path).exists() else ""
    if not path.is_dir():
        raise MgpoError(f"{path}: no such shard directory{staged}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MgpoError(
            f"{path}: no {MANIFEST}, so the shard set is incomplete; rerun the stage that writes it{staged}"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        found_kind = manifest["kind"]
        parts = [(str(part["file"]), int(part["rows"])) for part in manifest["parts"]]
        total = int(manifest["rows"])
        version = int(manifest.get("schema_version", 0))
    except (ValueError, KeyError, TypeError) as error:
        reason = f"missing key {error}" if isinstance(error, KeyError) else str(error)
        raise MgpoError(f"{manifest_path}: unreadable manifest ({reason})") from None
    if kind is not None and found_kind != kind:
        raise MgpoError(f"{path}: holds {found_kind} shards, expected {kind}")
    if version > SCHEMA_VERSION:
        raise MgpoError(f"{manifest_path}: schema version {version} is newer than this mgpo")
    if total != sum(rows for _, rows in parts):
        raise MgpoError(f"{manifest_path}: 'rows' is {total} but its parts add up to another count")
    for name, rows in parts:
        file = path / name
        if not file.is_file():
            raise MgpoError(f"{file}: listed in {MANIFEST} but missing")
        try:
            metadata = pq.read_metadata(file)
            schema = metadata.schema.to_arrow_schema()
        except _READ_ERRORS as error:
            raise MgpoError(f"{file}: not a readable Parquet file ({_first_line(error)})") from None
        if metadata.num_rows != rows:
            raise MgpoError(
                f"{file}: holds {metadata.num_rows} rows but {MANIFEST} says {rows}; "
                "the shard set is damaged (write it again)"
            )
        if found_kind in KINDS:
            check_columns(schema, found_kind, str(file))
    return ShardSet(path=path, manifest=manifest)
