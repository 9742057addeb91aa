"""Small local copies of the benchmarks in their hub schemas, for the eval tests.

MathVista, MathVerse and Geometry3K are written with ``datasets`` and their hub features (so
images are decoded as the hub would give them); We-Math as a plain Parquet table with image
structs; MathVision as JSONL with image paths relative to the file, as in its GitHub release.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage


def png(colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


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


def mathvista_record(
    pid: str,
    answer: str,
    question_type: str,
    answer_type: str,
    choices: list[str] | None = None,
    precision: float | None = None,
    task: str = "geometry problem solving",
    skills: tuple[str, ...] = ("algebraic reasoning",),
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
            "split": "testmini",
            "task": task,
        },
        "query": query,
    }


def write_mathvista(root: Path, records: list[dict[str, Any]]) -> Path:
    folder = root / "mathvista" / "data"
    folder.mkdir(parents=True)
    Dataset.from_list(records, features=MATHVISTA_FEATURES).to_parquet(
        str(folder / "testmini-00000-of-00001.parquet")
    )
    return root / "mathvista"


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


def mathverse_record(
    sample: int, problem: int, version: str, question: str, answer: str, question_type: str
) -> dict[str, Any]:
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
        "query_wo": f"WO: answer directly. {question}",
        "query_cot": f"COT: reason first. {question}",
        "question_for_eval": question,
    }


def write_mathverse(root: Path, records: list[dict[str, Any]]) -> Path:
    folder = root / "mathverse"
    folder.mkdir(parents=True)
    Dataset.from_list(records, features=MATHVERSE_FEATURES).to_parquet(
        str(folder / "testmini.parquet")
    )
    return folder


def write_mathvision(root: Path, split_records: dict[str, list[dict[str, Any]]]) -> Path:
    """JSONL per split with ``image`` paths relative to the folder (the GitHub release layout)."""
    folder = root / "mathvision"
    (folder / "images").mkdir(parents=True)
    for split, records in split_records.items():
        lines = []
        for record in records:
            (folder / "images" / f"{record['id']}.jpg").write_bytes(png((10, 120, 10)))
            lines.append(json.dumps({**record, "image": f"images/{record['id']}.jpg"}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def mathvision_record(
    ident: int, answer: str, options: list[str], level: int, subject: str
) -> dict[str, Any]:
    return {
        "id": str(ident),
        "question": f"<image1> Problem {ident}.",
        "options": options,
        "answer": answer,
        "solution": None,
        "level": level,
        "subject": subject,
    }


WEMATH_SCHEMA = pa.schema(
    [
        ("ID", pa.string()),
        ("split", pa.string()),
        ("knowledge concept", pa.string()),
        ("question", pa.string()),
        ("option", pa.string()),
        ("answer", pa.string()),
        ("image_path", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("key", pa.string()),
        ("question number", pa.int64()),
        ("knowledge concept description", pa.string()),
    ]
)


def write_wemath(root: Path, records: list[dict[str, Any]]) -> Path:
    folder = root / "wemath"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records, schema=WEMATH_SCHEMA), folder / "testmini.parquet")
    return folder


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


GEOMETRY3K_FEATURES = Features(
    {"images": List(Image()), "problem": Value("string"), "answer": Value("string")}
)


def write_geometry3k(root: Path, records: list[dict[str, Any]]) -> Path:
    folder = root / "geometry3k" / "data"
    folder.mkdir(parents=True)
    Dataset.from_list(records, features=GEOMETRY3K_FEATURES).to_parquet(
        str(folder / "test-00000-of-00001.parquet")
    )
    return root / "geometry3k"
