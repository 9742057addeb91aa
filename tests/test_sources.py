"""Local hub snapshots: which files are a split (README ``configs`` first, then names, one
format), and every failure to read them as one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_fixtures import mathverse_record, readme, write_mathverse
from stages.errors import MgpoError
from stages.eval import get_benchmark
from stages.sources import config_files, one_format, split_files


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[]")


def names(root: Path, files: list[Path]) -> list[str]:
    return [f.relative_to(root).as_posix() for f in files]


def test_configs_block_forms(tmp_path):
    touch(tmp_path, "data/test-0.parquet", "data/test-1.parquet", "data/testmini-0.parquet")
    touch(tmp_path, "extra.json", "train.csv")
    readme(
        tmp_path,
        "- config_name: default\n  data_files:\n  - split: test\n    path: data/test-*\n"
        "  - split: testmini\n    path: [data/testmini-*]\n"
        "- config_name: plain\n  data_files: extra.json\n",
    )
    assert names(tmp_path, config_files(tmp_path, "test")) == [
        "data/test-0.parquet",
        "data/test-1.parquet",
    ]
    assert names(tmp_path, config_files(tmp_path, "testmini")) == ["data/testmini-0.parquet"]
    assert names(tmp_path, config_files(tmp_path, "train", "plain")) == ["extra.json"]
    with pytest.raises(MgpoError, match="no config 'other' in its configs block"):
        config_files(tmp_path, "test", "other")
    with pytest.raises(MgpoError, match="config 'default' has no split 'train'"):
        config_files(tmp_path, "train")


def test_without_a_configs_block_names_decide_and_parquet_wins(tmp_path):
    touch(tmp_path, "data/testmini-00000-of-00001-abc.parquet", "testmini.json", "nodes.json")
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# card\n")  # We-Math's card
    assert config_files(tmp_path, "testmini") is None
    files = split_files(tmp_path, "testmini")
    assert names(tmp_path, files) == ["data/testmini-00000-of-00001-abc.parquet"]
    assert one_format([Path("a.json"), Path("b.jsonl")]) == [Path("b.jsonl")]


def test_a_broken_card_is_one_line(tmp_path):
    touch(tmp_path, "test.parquet")
    (tmp_path / "README.md").write_text("---\nconfigs: [unclosed\n---\n")
    with pytest.raises(MgpoError, match="README.md: front matter is not valid YAML") as error:
        split_files(tmp_path, "test")
    assert "\n" not in str(error.value)


def test_unreadable_snapshot_files_are_one_line(tmp_path):
    folder = write_mathverse(tmp_path, [mathverse_record(1, 1, "Text Lite", "Q", "1", "free-form")])
    (folder / "testmini.parquet").write_bytes(b"PAR1 broken PAR1")
    with pytest.raises(MgpoError, match="could not read") as error:
        get_benchmark("mathverse").load(source=folder)
    assert "\n" not in str(error.value)
