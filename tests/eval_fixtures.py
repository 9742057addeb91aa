"""Small local copies of the benchmarks laid out as their hub snapshots are published.

Each ``write_*`` makes a folder with the same files as the dataset's hub repository (checked
against the repositories' file trees and dataset cards): the README front matter with the same
``configs`` block (or none, for We-Math), the parquet files under the same names, and the sibling
files that are not the split (JSON copies of the same rows, image archives, annotation files),
so the tests read what ``mgpo eval --source SNAPSHOT`` meets in practice. Rows are written with
``datasets`` and the hub features (images decode as the hub gives them); the JSON siblings hold
image *paths*, so reading them together with the parquet file would fail as it did before.

Parquet names carry the hub's content hashes where the tree shows them; MathVista's
``test-00000-of-00002`` and Geometry3K's hashes are not known here and are left out (the
``configs`` patterns match either way).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage


def png(colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def tree(folder: Path) -> list[str]:
    """The files under ``folder``, as sorted relative paths (to compare with a hub file tree)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def readme(folder: Path, configs: str | None) -> None:
    """A dataset card: YAML front matter (with the ``configs`` block, when given) and a body."""
    header = "license: mit\n" + (f"configs:\n{configs}" if configs else "")
    (folder / "README.md").write_text(f"---\n{header}---\n\n# Dataset card\n")


def zip_of(path: Path, names: list[str]) -> None:
    """An image archive like the hub's ``images.zip`` (never read by mgpo)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, png())


def _parquet(path: Path, records: list[dict[str, Any]], features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if records:
        table = Dataset.from_list(records, features=features)
    else:
        table = Dataset.from_dict({name: [] for name in features}, features=features)
    table.to_parquet(str(path))


def _json(path: Path, records: list[dict[str, Any]], image_column: str) -> None:
    """The hub's JSON sibling: the same rows, the image column as a path string."""
    rows = [{**r, image_column: f"images/{i}.png"} for i, r in enumerate(records)]
    path.write_text(json.dumps(rows, ensure_ascii=False))


# ------------------------------------------------------------------------------------ MathVista

MATHVISTA_FEATURES = Features(
    {
        "pid": Value("string"),
        "question": Value("string"),
        "image": Value("string"),
        "decoded_image": Image(),
        "choices": List(Value("string")),
        "unit": Value("string"),
        "precision": Value("float64"),
        "answer": Value("string"),
        "question_type": Value("string"),
        "answer_type": Value("string"),
        "metadata": {
            "category": Value("string"),
            "context": Value("string"),
            "grade": Value("string"),
            "img_height": Value("int64"),
            "img_width": Value("int64"),
            "language": Value("string"),
            "skills": List(Value("string")),
            "source": Value("string"),
            "split": Value("string"),
            "task": Value("string"),
        },
        "query": Value("string"),
    }
)
MATHVISTA_CONFIGS = """\
- config_name: default
  data_files:
  - split: testmini
    path: data/testmini-*
  - split: test
    path: data/test-*
"""


def mathvista_record(
    pid: str,
    answer: str | None,
    question_type: str,
    answer_type: str,
    choices: list[str] | None = None,
    precision: float | None = None,
    task: str = "geometry problem solving",
    skills: tuple[str, ...] = ("algebraic reasoning",),
    split: str = "testmini",
) -> dict[str, Any]:
    question = f"Question {pid}?"
    query = f"Hint: answer it.\nQuestion: {question}"
    if choices:
        query += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return {
        "pid": pid,
        "question": question,
        "image": f"images/{pid}.jpg",
        "decoded_image": {"bytes": png(), "path": None},
        "choices": choices,
        "unit": None,
        "precision": precision,
        "answer": answer,
        "question_type": question_type,
        "answer_type": answer_type,
        "metadata": {
            "category": "math-targeted-vqa",
            "context": "geometry diagram",
            "grade": "high school",
            "img_height": 8,
            "img_width": 8,
            "language": "english",
            "skills": list(skills),
            "source": "Geometry3K",
            "split": split,
            "task": task,
        },
        "query": query,
    }


def write_mathvista(
    root: Path, records: list[dict[str, Any]], test: list[dict[str, Any]] | None = None
) -> Path:
    """``AI4Math/MathVista``: README (configs), data/testmini + two data/test parquet files,
    ``annot_testmini.json``, ``source.json``, ``images.zip``. ``test`` rows (answer null, as
    published) default to two rows, one per test file."""
    folder = root / "mathvista"
    data = folder / "data"
    _parquet(data / "testmini-00000-of-00001-725687bf7a18d64b.parquet", records, MATHVISTA_FEATURES)
    test = test or [
        mathvista_record(f"t{i}", None, "free_form", "integer", split="test") for i in (1, 2)
    ]
    half = (len(test) + 1) // 2
    _parquet(data / "test-00000-of-00002.parquet", test[:half], MATHVISTA_FEATURES)
    _parquet(data / "test-00001-of-00002-6a611c71596db30f.parquet", test[half:], MATHVISTA_FEATURES)
    readme(folder, MATHVISTA_CONFIGS)
    annotations = {r["pid"]: {k: v for k, v in r.items() if k != "decoded_image"} for r in records}
    (folder / "annot_testmini.json").write_text(json.dumps(annotations))
    (folder / "source.json").write_text(json.dumps({"Geometry3K": {"license": "mit"}}))
    zip_of(folder / "images.zip", [f"images/{r['pid']}.jpg" for r in records])
    return folder


# ------------------------------------------------------------------------------------ MathVerse

MATHVERSE_FEATURES = Features(
    {
        "sample_index": Value("string"),
        "problem_index": Value("string"),
        "problem_version": Value("string"),
        "question": Value("string"),
        "image": Image(),
        "answer": Value("string"),
        "question_type": Value("string"),
        "metadata": {
            "split": Value("string"),
            "source": Value("string"),
            "subject": Value("string"),
            "subfield": Value("string"),
        },
        "query_wo": Value("string"),
        "query_cot": Value("string"),
        "question_for_eval": Value("string"),
    }
)
MATHVERSE_CONFIGS = """\
- config_name: testmini
  data_files:
  - split: testmini
    path: testmini.parquet
- config_name: testmini_text_only
  data_files:
  - split: testmini_text_only
    path: testmini_text_only.parquet
"""


def mathverse_record(
    sample: int,
    problem: int,
    version: str,
    question: str,
    answer: str,
    question_type: str,
    question_for_eval: str | None = None,
) -> dict[str, Any]:
    """One row; a "Vision Only" row has an empty ``question`` and its text in
    ``question_for_eval`` (pass it), as published."""
    for_eval = question if question_for_eval is None else question_for_eval
    ask = "the correct option letter" if question_type == "multi-choice" else "the final answer"
    lead = "According to the question shown in the image, please" if not question else "Please"
    return {
        "sample_index": str(sample),
        "problem_index": str(problem),
        "problem_version": version,
        "question": question,
        "image": {"bytes": png(), "path": None},
        "answer": answer,
        "question_type": question_type,
        "metadata": {
            "split": "testmini",
            "source": "GeoQA",
            "subject": "Plane Geometry",
            "subfield": "Angle" if question_type == "multi-choice" else "Length",
        },
        "query_wo": f"WO: {lead} directly answer and provide {ask}.\n{question}".strip(),
        "query_cot": f"COT: {lead} first conduct reasoning, then provide {ask}.\n{question}".strip(),
        "question_for_eval": for_eval,
    }


def write_mathverse(root: Path, records: list[dict[str, Any]]) -> Path:
    """``AI4Math/MathVerse``: README (configs testmini, testmini_text_only), ``testmini.parquet``,
    ``testmini.json``, ``testmini_text_only.{parquet,json}``, ``images.zip``."""
    folder = root / "mathverse"
    _parquet(folder / "testmini.parquet", records, MATHVERSE_FEATURES)
    _json(folder / "testmini.json", records, "image")
    text_only = [
        {**r, "problem_version": "Text Only", "image": None}
        for r in records
        if r["problem_version"] == "Text Dominant"
    ] or [{**records[0], "problem_version": "Text Only", "image": None}]
    _parquet(folder / "testmini_text_only.parquet", text_only, MATHVERSE_FEATURES)
    _json(folder / "testmini_text_only.json", text_only, "image")
    readme(folder, MATHVERSE_CONFIGS)
    zip_of(folder / "images.zip", ["images_version_1-4/image_1.png"])
    return folder


# ----------------------------------------------------------------------------------- MathVision

MATHVISION_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "options": List(Value("string")),
        "image": Value("string"),
        "decoded_image": Image(),
        "answer": Value("string"),
        "solution": Value("string"),
        "level": Value("int64"),
        "subject": Value("string"),
    }
)
MATHVISION_CONFIGS = """\
- config_name: default
  data_files:
  - split: test
    path: data/test-*
  - split: testmini
    path: data/testmini-*
"""
MATHVISION_FILES = {
    "test": "data/test-00000-of-00001-3532b8d3f1b4047a.parquet",
    "testmini": "data/testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet",
}


def mathvision_record(
    ident: int, answer: str, options: list[str], level: int, subject: str
) -> dict[str, Any]:
    return {
        "id": str(ident),
        "question": f"<image1> Problem {ident}.",
        "options": options,
        "image": f"images/{ident}.jpg",
        "answer": answer,
        "solution": None,
        "level": level,
        "subject": subject,
    }


def write_mathvision(root: Path, split_records: dict[str, list[dict[str, Any]]]) -> Path:
    """``MathLLMs/MathVision``: README (configs), one parquet per split under ``data/`` with the
    image decoded in ``decoded_image``, ``images.zip`` and ``assets/``."""
    folder = root / "mathvision"
    for split, records in split_records.items():
        rows = [
            {**r, "decoded_image": {"bytes": png((10, 120, 10)), "path": None}} for r in records
        ]
        _parquet(folder / MATHVISION_FILES[split], rows, MATHVISION_FEATURES)
    readme(folder, MATHVISION_CONFIGS)
    zip_of(folder / "images.zip", ["images/1.jpg"])
    (folder / "assets").mkdir()
    (folder / "assets" / "figure1_new.png").write_bytes(png())
    return folder


def write_mathvision_github(root: Path, split_records: dict[str, list[dict[str, Any]]]) -> Path:
    """The GitHub release ``mathllm/MATH-V``: ``data/SPLIT.jsonl`` with ``image`` paths relative
    to the repository root, ``images/ID.jpg``, and a README without front matter."""
    folder = root / "MATH-V"
    (folder / "images").mkdir(parents=True)
    (folder / "data").mkdir()
    for split, records in split_records.items():
        lines = []
        for record in records:
            (folder / record["image"]).write_bytes(png((10, 120, 10)))
            lines.append(json.dumps(record))
        (folder / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "README.md").write_text("# Measuring Multimodal Mathematical Reasoning\n")
    return folder


# -------------------------------------------------------------------------------------- We-Math

WEMATH_FEATURES = Features(
    {
        "ID": Value("string"),
        "split": Value("string"),
        "knowledge concept": Value("string"),
        "question": Value("string"),
        "option": Value("string"),
        "answer": Value("string"),
        "image_path": Image(),
        "key": Value("string"),
        "question number": Value("int64"),
        "knowledge concept description": Value("string"),
    }
)
WEMATH_KEYS = (
    "2steps_1",
    "2steps_2",
    "2steps_multi",
    "3steps_1",
    "3steps_2",
    "3steps_3",
    "3steps_multi",
)


def wemath_record(group: str, key: str, answer: str, number: int, concept: str) -> dict[str, Any]:
    return {
        "ID": group,
        "split": "testmini",
        "knowledge concept": concept,
        "question": f"{group} {key}: which option?",
        "option": "A. 1;B. 2;C. 3;D. 4;E. No correct answer",
        "answer": answer,
        "image_path": {"bytes": png((0, 0, 200)), "path": f"{group}.png"},
        "key": key,
        "question number": number,
        "knowledge concept description": "...",
    }


def write_wemath(root: Path, records: list[dict[str, Any]]) -> Path:
    """``We-Math/We-Math``: a README *without* a configs block, the parquet file under ``data/``,
    ``testmini.json`` (the same rows, image paths), ``testmini.zip`` and
    ``knowledge_structure_nodes.json``. Rows are written key-major, as published (every
    ``2steps_1`` row, then every ``2steps_2`` row, ...), whatever order they are given in."""
    folder = root / "wemath"
    ordered = sorted(records, key=lambda r: WEMATH_KEYS.index(r["key"]))
    _parquet(
        folder / "data" / "testmini-00000-of-00001-adbfe22dcd3558e6.parquet",
        ordered,
        WEMATH_FEATURES,
    )
    _json(folder / "testmini.json", ordered, "image_path")
    readme(folder, None)
    zip_of(folder / "testmini.zip", ["testmini/image/1-1.png"])
    (folder / "knowledge_structure_nodes.json").write_text(json.dumps([{"id": 1}]))
    return folder


# ----------------------------------------------------------------------------------- Geometry3K

GEOMETRY3K_FEATURES = Features(
    {
        "images": List(Image()),
        "problem": Value("string"),
        "answer": Value("string"),
        "id": Value("int64"),
        "choices": List(Value("string")),
        "ground_truth": Value("string"),
    }
)
GEOMETRY3K_CONFIGS = """\
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
  - split: test
    path: data/test-*
"""


def geometry3k_record(
    ident: int, problem: str, choices: list[str], gold: int, image: bytes | None = None
) -> dict[str, Any]:
    """A row of the current hub revision: ``answer`` is the gold choice's text,
    ``ground_truth`` its letter."""
    return {
        "images": [{"bytes": image or png(), "path": None}],
        "problem": problem,
        "answer": choices[gold],
        "id": ident,
        "choices": choices,
        "ground_truth": chr(ord("A") + gold),
    }


def write_geometry3k(root: Path, records: list[dict[str, Any]], split: str = "test") -> Path:
    """``hiyouga/geometry3k``: README (configs) and one parquet file per split under ``data/``
    (``records`` as ``split``, one row in each other split)."""
    folder = root / "geometry3k"
    other = [geometry3k_record(0, "<image>Find y.", ["1", "2", "3", "4"], 0)]
    for name in ("train", "validation", "test"):
        rows = records if name == split else other
        full = [{"id": i, "choices": None, "ground_truth": None, **r} for i, r in enumerate(rows)]
        _parquet(folder / "data" / f"{name}-00000-of-00001.parquet", full, GEOMETRY3K_FEATURES)
    readme(folder, GEOMETRY3K_CONFIGS)
    return folder
