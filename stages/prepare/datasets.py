"""The datasets ``mgpo prepare`` knows, by name: where each comes from and how it is shaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.config import NonNegativeInt, PositiveInt, check_values
from stages.prepare import arithmetic, geometry3k, shapes


@dataclass(frozen=True)
class PrepareOptions:
    """Everything ``mgpo prepare`` was asked for (one frozen object, saved in the manifest)."""

    name: str
    split: str = "train"
    source: str | None = None
    out: str | None = None
    min_pixels: NonNegativeInt | None = None
    max_pixels: PositiveInt | None = None
    template: str | None = None
    limit: PositiveInt | None = None
    seed: int = 0
    size: PositiveInt | None = None
    difficulty: str = "easy"
    image_size: PositiveInt = 112
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_values(self, flags={})

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("data") / self.name / self.split


@dataclass(frozen=True)
class DatasetSpec:
    description: str
    origin: str
    splits: tuple[str, ...]
    template: str
    min_pixels: int
    max_pixels: int
    problems: Callable[[PrepareOptions], Iterator[dict[str, Any]]]


def _shapes(options: PrepareOptions) -> Iterator[dict[str, Any]]:
    size = options.size if options.size is not None else shapes.DEFAULT_SIZES[options.split]
    return shapes.generate(
        options.split,
        size=size,
        difficulty=options.difficulty,
        seed=options.seed,
        image_size=options.image_size,
    )


def _arithmetic(options: PrepareOptions) -> Iterator[dict[str, Any]]:
    size = options.size if options.size is not None else arithmetic.DEFAULT_SIZES[options.split]
    return arithmetic.generate(
        options.split, size=size, difficulty=options.difficulty, seed=options.seed
    )


DATASETS: dict[str, DatasetSpec] = {
    "arithmetic": DatasetSpec(
        description="built-in, offline, text only: multi-step integer arithmetic (exact answers)",
        origin="generated locally from --seed (--difficulty easy|medium|hard, --size)",
        splits=arithmetic.SPLITS,
        template="final_number",
        min_pixels=0,
        max_pixels=1 << 40,
        problems=_arithmetic,
    ),
    "geometry3k": DatasetSpec(
        description="Geometry3K diagrams with free-form answers (the paper's training set)",
        origin=f"hub {geometry3k.HUB_ID}, or --source: parquet/json/jsonl files or an Inter-GPS folder",
        splits=geometry3k.SPLITS,
        template="math_think_boxed",
        min_pixels=262_144,
        max_pixels=4_194_304,
        problems=lambda options: geometry3k.problems(options.source, options.split),
    ),
    "shapes": DatasetSpec(
        description="built-in, offline: colours, kinds, counts and areas of drawn shapes (short answers)",
        origin="generated locally from --seed (--difficulty colour|easy|medium|hard, --size, --image-size)",
        splits=shapes.SPLITS,
        template="short_answer",
        min_pixels=0,
        max_pixels=1 << 40,
        problems=_shapes,
    ),
}
