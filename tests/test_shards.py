"""Shard sets (DESIGN.md §3): round trips, Hugging Face compatibility, validation, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import REPO
from stages.errors import MgpoError
from stages.schemas import KINDS, SCHEMA_VERSION
from stages.shards import (
    MANIFEST,
    ShardWriter,
    open_shards,
    prompt_row,
    staging_dir,
    write_shards,
)

PRODUCER = {"command": "pytest", "stage": "test"}


def image(i: int, size: tuple[int, int] = (20, 12)) -> Image.Image:
    return Image.new("RGB", size, (i * 40 % 256, 255 - i, 7))


def prompt_rows(n: int) -> list[dict]:
    """Prompt-contract rows: some with two images, one text-only, choices sometimes null."""
    rows = []
    for i in range(n):
        count = 0 if i == 1 else (2 if i % 3 == 0 else 1)
        rows.append(
            {
                "id": f"p{i}",
                "prompt": "<image>" * count + f"What is {i}?",
                "images": [image(i + k) for k in range(count)],
                "answer": str(i * 2),
                "choices": ["a", "b"] if i % 2 else None,
                "source": "test",
                "meta": {"row": i},
            }
        )
    return rows


def score_rows(n: int) -> list[dict]:
    return [
        {"prompt_id": f"p{i // 2}", "sample": i % 2, "reward": i / 4, "extracted": str(i)}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "prompts"
    write_shards(out, "prompts", prompt_rows(7), producer=PRODUCER, rows_per_part=3)
    return out


def copy_set(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------- round trip


def test_round_trip_preserves_rows_and_images(prompts_dir: Path) -> None:
    shard_set = open_shards(prompts_dir, kind="prompts")
    expected = prompt_rows(7)
    got = [prompt_row(row) for row in shard_set.iter_rows()]
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for want, row in zip(expected, got, strict=True):
        assert row["prompt"] == want["prompt"]
        assert row["answer"] == want["answer"]
        assert row["choices"] == want["choices"]
        assert row["meta"] == want["meta"]
        assert row["prompt"].count("<image>") == len(row["images"])
        assert len(row["images"]) == len(want["images"])
        for a, b in zip(want["images"], row["images"], strict=True):
            assert b.mode == "RGB" and b.size == a.size
            assert list(b.get_flattened_data()) == list(a.get_flattened_data())


def test_manifest_describes_the_set(prompts_dir: Path) -> None:
    manifest = json.loads((prompts_dir / MANIFEST).read_text())
    assert manifest["kind"] == "prompts"
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["rows"] == 7
    assert [p["rows"] for p in manifest["parts"]] == [3, 3, 1]
    assert [p["file"] for p in manifest["parts"]] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert manifest["columns"] == KINDS["prompts"].names
    assert manifest["producer"] == PRODUCER
    assert len(manifest["content_sha256"]) == 64
    assert sorted(p.name for p in prompts_dir.iterdir()) == sorted(
        [MANIFEST] + [p["file"] for p in manifest["parts"]]
    )
    assert not staging_dir(prompts_dir).exists()
    for part in manifest["parts"]:
        metadata = pq.ParquetFile(prompts_dir / part["file"]).metadata
        assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_huggingface_datasets_reads_prompts_with_images_decoded(
    prompts_dir: Path, tmp_path: Path
) -> None:
    import datasets

    files = sorted(str(p) for p in prompts_dir.glob("part-*.parquet"))
    loaded = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(loaded) == 7
    images_feature = loaded.features["images"]
    assert isinstance(images_feature.feature, datasets.Image)
    expected = prompt_rows(7)
    for want, row in zip(expected, loaded, strict=True):
        assert row["id"] == want["id"] and row["answer"] == want["answer"]
        assert row["choices"] == want["choices"]
        assert json.loads(row["meta"]) == want["meta"]
        assert len(row["images"]) == len(want["images"])
        for a, b in zip(want["images"], row["images"], strict=True):
            assert isinstance(b, Image.Image)
            assert list(b.convert("RGB").get_flattened_data()) == list(a.get_flattened_data())


def test_other_kinds_round_trip_through_datasets(tmp_path: Path) -> None:
    import datasets

    out = write_shards(tmp_path / "scores", "scores", score_rows(5), producer=PRODUCER)
    assert open_shards(out, kind="scores").read_table().to_pylist() == [
        {**r, "reward": pytest.approx(r["reward"])} for r in score_rows(5)
    ]
    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(out / "part-00000.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert loaded.features["sample"] == datasets.Value("int32")
    assert loaded["extracted"] == [str(i) for i in range(5)]


def test_empty_set_has_a_readable_schema(tmp_path: Path) -> None:
    out = write_shards(tmp_path / "empty", "prompts", [], producer=PRODUCER)
    shard_set = open_shards(out)
    assert shard_set.num_rows == 0
    assert shard_set.schema.names == KINDS["prompts"].names
    assert list(shard_set.iter_rows()) == []


def test_extra_columns_are_kept(tmp_path: Path) -> None:
    schema = KINDS["scores"].append(pa.field("format", pa.float32()))
    rows = [{**r, "format": 1.0} for r in score_rows(3)]
    out = write_shards(tmp_path / "s", "scores", rows, producer=PRODUCER, schema=schema)
    shard_set = open_shards(out, kind="scores")
    assert "format" in shard_set.schema.names
    assert [r["format"] for r in shard_set.iter_rows()] == [1.0] * 3


# ----------------------------------------------------------------------------- streaming


def test_iter_batches_streams_in_bounded_batches(prompts_dir: Path) -> None:
    shard_set = open_shards(prompts_dir)
    batches = list(shard_set.iter_batches(columns=["id", "answer"], batch_size=2))
    assert len(batches) >= 4  # 3 parts of 3, 3, 1 rows in batches of at most 2
    assert all(batch.num_rows <= 2 for batch in batches)
    assert all(batch.schema.names == ["id", "answer"] for batch in batches)
    assert [i for b in batches for i in b.column("id").to_pylist()] == [f"p{i}" for i in range(7)]


def test_row_counts_are_checked_against_the_part_footers(prompts_dir: Path, tmp_path: Path) -> None:
    # A manifest whose counts disagree with its parts is damaged, never trusted (a reader would
    # silently process fewer rows); the check reads footers only.
    target = copy_set(prompts_dir, tmp_path / "copy")
    manifest = json.loads((target / MANIFEST).read_text())
    assert open_shards(target).num_rows == manifest["rows"]
    manifest["rows"] = 12345
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(MgpoError, match="'rows' is 12345"):
        open_shards(target)
    manifest["rows"] -= 12345 - sum(p["rows"] for p in manifest["parts"]) + 1
    manifest["parts"][0]["rows"] -= 1
    (target / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        MgpoError, match="part-00000.parquet: holds 3 rows but manifest.json says 2"
    ):
        open_shards(target)


# ----------------------------------------------------------------------------- validation


def replace_part(target: Path, table: pa.Table, index: int = 0) -> Path:
    part = target / f"part-{index:05d}.parquet"
    pq.write_table(table, part)
    return part


def test_missing_column_names_file_and_column(prompts_dir: Path, tmp_path: Path) -> None:
    target = copy_set(prompts_dir, tmp_path / "copy")
    table = pq.read_table(target / "part-00001.parquet").drop_columns(["answer"])
    part = replace_part(target, table, 1)
    with pytest.raises(MgpoError) as caught:
        open_shards(target)
    message = str(caught.value)
    assert str(part) in message and "'answer'" in message and "missing" in message


def test_wrong_column_type_names_file_and_column(tmp_path: Path) -> None:
    out = write_shards(tmp_path / "s", "scores", score_rows(4), producer=PRODUCER)
    table = pq.read_table(out / "part-00000.parquet")
    table = table.set_column(1, "sample", pa.array(["0", "1", "0", "1"]))
    part = replace_part(out, table)
    with pytest.raises(MgpoError) as caught:
        open_shards(out)
    assert str(part) in str(caught.value) and "'sample'" in str(caught.value)


def test_compatible_widths_are_accepted(tmp_path: Path) -> None:
    out = write_shards(tmp_path / "s", "scores", score_rows(4), producer=PRODUCER)
    table = pq.read_table(out / "part-00000.parquet")
    table = table.set_column(1, "sample", pa.array([0, 1, 0, 1], pa.int64()))
    table = table.set_column(2, "reward", pa.array([0.0, 0.5, 1.0, 1.5], pa.float64()))
    replace_part(out, table)
    assert open_shards(out, kind="scores").read_table().column("sample").to_pylist() == [0, 1, 0, 1]


def test_manifest_missing_means_incomplete(prompts_dir: Path, tmp_path: Path) -> None:
    target = copy_set(prompts_dir, tmp_path / "copy")
    (target / MANIFEST).unlink()
    with pytest.raises(MgpoError, match="no manifest.json"):
        open_shards(target)
    staging_dir(target).mkdir()
    with pytest.raises(MgpoError, match="unfinished run is staged"):
        open_shards(target)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_dir", "no such shard directory"),
        ("bad_json", "unreadable manifest"),
        ("missing_part", "listed in manifest.json but missing"),
        ("not_parquet", "not a readable Parquet file"),
        ("newer_schema", "newer than this mgpo"),
        ("no_parts_key", "unreadable manifest \\(missing key 'parts'\\)"),
        ("text_schema_version", "unreadable manifest"),
        ("parts_not_objects", "unreadable manifest"),
    ],
)
def test_damaged_sets_give_one_clear_error(
    prompts_dir: Path, tmp_path: Path, damage: str, expected: str
) -> None:
    target = copy_set(prompts_dir, tmp_path / "copy")
    manifest_path = target / MANIFEST
    if damage == "no_dir":
        target = tmp_path / "absent"
    elif damage == "bad_json":
        manifest_path.write_text("{not json")
    elif damage == "missing_part":
        (target / "part-00002.parquet").unlink()
    elif damage == "not_parquet":
        (target / "part-00002.parquet").write_bytes(b"nonsense")
    else:
        manifest = json.loads(manifest_path.read_text())
        if damage == "newer_schema":
            manifest["schema_version"] = SCHEMA_VERSION + 1
        elif damage == "no_parts_key":
            del manifest["parts"]
        elif damage == "text_schema_version":
            manifest["schema_version"] = "one"
        else:
            manifest["parts"] = ["part-00000.parquet"]
        manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MgpoError, match=expected) as caught:
        open_shards(target)
    assert "\n" not in str(caught.value)


def test_kind_mismatch(prompts_dir: Path) -> None:
    with pytest.raises(MgpoError, match="holds prompts shards, expected rollouts"):
        open_shards(prompts_dir, kind="rollouts")


def test_verify_detects_changed_bytes(prompts_dir: Path, tmp_path: Path) -> None:
    target = copy_set(prompts_dir, tmp_path / "copy")
    open_shards(target).verify()
    part = target / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[8] ^= 0xFF  # inside the first data page: the footer (and schema) stay readable
    part.write_bytes(bytes(data))
    shard_set = open_shards(target)
    with pytest.raises(MgpoError) as caught:
        shard_set.verify()
    assert str(part) in str(caught.value)


# ----------------------------------------------------------------------------- staging, overwrite


def test_staging_directory_until_close(tmp_path: Path) -> None:
    out = tmp_path / "set"
    with ShardWriter(out, "scores", producer=PRODUCER, rows_per_part=2) as writer:
        writer.add(score_rows(5))
        staged = staging_dir(out)
        assert staged.name == ".set.partial" and staged.is_dir()
        assert sorted(p.name for p in staged.glob("part-*")) == [
            "part-00000.parquet",
            "part-00001.parquet",
        ]
        assert not (staged / MANIFEST).exists() and not out.exists()
    assert not staged.exists()
    assert open_shards(out).num_rows == 5


def test_failure_inside_writer_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "set"

    def rows():
        yield from score_rows(3)
        raise MgpoError("bad row")

    with pytest.raises(MgpoError, match="bad row"):
        write_shards(out, "scores", rows(), producer=PRODUCER, rows_per_part=1)
    assert not out.exists() and not staging_dir(out).exists()
    assert not (tmp_path / "deep").exists(), "an empty parent directory was left behind"


def test_keep_partial_keeps_finished_parts_without_manifest(tmp_path: Path) -> None:
    out = tmp_path / "set"
    with (
        pytest.raises(RuntimeError),
        ShardWriter(out, "scores", producer=PRODUCER, keep_partial=True) as writer,
    ):
        writer.write_part(score_rows(2))
        raise RuntimeError("killed")
    assert not out.exists()
    assert [p.name for p in staging_dir(out).glob("part-*")] == ["part-00000.parquet"]
    assert not (staging_dir(out) / MANIFEST).exists()


def test_complete_set_is_not_replaced_without_overwrite(prompts_dir: Path, tmp_path: Path) -> None:
    target = copy_set(prompts_dir, tmp_path / "copy")
    before = (target / MANIFEST).read_text()
    with pytest.raises(MgpoError, match="already holds a complete shard set.*--overwrite"):
        write_shards(target, "scores", score_rows(2), producer=PRODUCER)
    assert (target / MANIFEST).read_text() == before
    assert not staging_dir(target).exists()

    write_shards(target, "scores", score_rows(2), producer=PRODUCER, overwrite=True)
    shard_set = open_shards(target, kind="scores")
    assert shard_set.num_rows == 2
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "part-00000.parquet"]
    assert not any(p.name.startswith(".copy") for p in tmp_path.iterdir())


def test_failed_overwrite_keeps_the_old_set(prompts_dir: Path, tmp_path: Path) -> None:
    target = copy_set(prompts_dir, tmp_path / "copy")

    def rows():
        yield from score_rows(2)
        raise MgpoError("bad row")

    with pytest.raises(MgpoError):
        write_shards(target, "scores", rows(), producer=PRODUCER, overwrite=True)
    assert open_shards(target, kind="prompts").num_rows == 7


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_directories_are_refused_even_with_overwrite(
    tmp_path: Path, overwrite: bool
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    (busy / "part-00000.parquet").write_bytes(b"")
    with pytest.raises(MgpoError, match="not a shard set.*'notes.txt'"):
        write_shards(busy, "scores", score_rows(1), producer=PRODUCER, overwrite=overwrite)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt", "part-00000.parquet"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(MgpoError, match="not a directory"):
        write_shards(a_file, "scores", score_rows(1), producer=PRODUCER, overwrite=overwrite)
    assert a_file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "file"]


def test_empty_or_incomplete_directories_are_replaced(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_shards(empty, "scores", score_rows(1), producer=PRODUCER)
    assert open_shards(empty).num_rows == 1
    incomplete = tmp_path / "incomplete"  # parts without a manifest: unfinished, so redone
    incomplete.mkdir()
    (incomplete / "part-00000.parquet").write_bytes(b"stale")
    (incomplete / "part-00001.parquet.tmp").write_bytes(b"stale")
    write_shards(incomplete, "scores", score_rows(2), producer=PRODUCER)
    assert open_shards(incomplete).num_rows == 2
    assert sorted(p.name for p in incomplete.iterdir()) == [MANIFEST, "part-00000.parquet"]


# ----------------------------------------------------------------------------- killed writers

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from stages.shards import ShardWriter
    out = sys.argv[1]
    writer = ShardWriter(out, "scores", producer={"command": "killed"}, rows_per_part=2)
    for i in range(5):  # two full parts, one buffered row
        writer.add([{"prompt_id": f"p{i}", "sample": 0, "reward": 1.0, "extracted": str(i)}])
    (writer.staging / "part-00002.parquet.tmp").write_bytes(b"half a part")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.fixture
def killed_writer(tmp_path: Path) -> Path:
    out = tmp_path / "set"
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr
    return out


def test_killed_writer_leaves_no_manifest(killed_writer: Path) -> None:
    staged = staging_dir(killed_writer)
    assert not killed_writer.exists()
    assert sorted(p.name for p in staged.glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet.tmp",
    ]
    assert not (staged / MANIFEST).exists()
    with pytest.raises(MgpoError, match="no such shard directory"):
        open_shards(killed_writer)
    killed_writer.mkdir()  # even if someone creates the directory, it is not read as complete
    with pytest.raises(MgpoError, match="incomplete.*unfinished run is staged"):
        open_shards(killed_writer)


def test_resumed_writer_sees_earlier_parts(killed_writer: Path) -> None:
    producer = {"command": "killed"}  # the same settings as the killed run
    with ShardWriter(killed_writer, "scores", producer=producer, resume=True) as writer:
        done = [row["extracted"] for row in writer.existing_rows(["extracted"])]
        assert done == ["0", "1", "2", "3"]
        assert not list(writer.staging.glob("*.tmp")), "a half-written part survived resume"
        writer.write_part([{"prompt_id": "p4", "sample": 0, "reward": 1.0, "extracted": "4"}])
    shard_set = open_shards(killed_writer, kind="scores")
    assert [r["extracted"] for r in shard_set.iter_rows()] == ["0", "1", "2", "3", "4"]
    assert [p.name for p in shard_set.files] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]


@pytest.mark.parametrize(
    ("resume", "producer"), [(False, {"command": "killed"}), (True, {"command": "other"})]
)
def test_fresh_writer_discards_a_killed_run(
    killed_writer: Path, resume: bool, producer: dict
) -> None:
    # Not resuming, or resuming with different settings, starts over.
    with ShardWriter(killed_writer, "scores", producer=producer, resume=resume) as writer:
        assert list(writer.existing_rows(["extracted"])) == []
        writer.add(score_rows(1))
    assert open_shards(killed_writer).num_rows == 1
