"""``shapes``: a built-in, offline task of drawn shapes with short verifiable answers.

It exists so anyone can watch RL work in minutes on a laptop CPU: answers are one word or digit,
the visual signal is strong (a colour, a silhouette, a count), and every item is drawn from a seeded
random generator, so the same ``--seed`` always gives the same data. Splits use different streams,
so held-out items are new drawings.

Difficulty levels add question kinds (``colour`` is the colour question alone: the quickest to
learn, used by the learning test):
- easy: the colour of one shape (4 colours), or its kind (circle / square / triangle);
- medium: 6 colours, and counting 1-4 shapes;
- hard: counting up to 9 among distractors of another colour, and the area of a rectangle drawn on
  a grid (in cells).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 512, "validation": 64, "test": 128}
DIFFICULTIES = ("colour", "easy", "medium", "hard")

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
KINDS = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Item:
    question: str
    answer: str
    choices: list[str] | None
    image: Image.Image
    task: str


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour
) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def _one_shape(rng: random.Random, size: int, colours: list[str]) -> tuple[Image.Image, str, str]:
    image, draw = _canvas(size)
    kind, colour = rng.choice(KINDS), rng.choice(colours)
    side = rng.randint(size // 2, size - 8)
    x0, y0 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    _draw_shape(draw, kind, (x0, y0, x0 + side, y0 + side), COLOURS[colour])
    return image, kind, colour


def colour_question(rng: random.Random, size: int, colours: list[str]) -> Item:
    image, _, colour = _one_shape(rng, size, colours)
    return Item("<image>What colour is the shape?", colour, list(colours), image, "colour")


def kind_question(rng: random.Random, size: int, colours: list[str]) -> Item:
    image, kind, _ = _one_shape(rng, size, colours)
    return Item("<image>What shape is this?", kind, list(KINDS), image, "kind")


def _place(rng: random.Random, size: int, count: int, side: int) -> list[tuple[int, int]]:
    """Non-overlapping top-left corners on a coarse grid, so counts stay unambiguous."""
    cells = size // side
    spots = [(c * side, r * side) for r in range(cells) for c in range(cells)]
    return rng.sample(spots, count)


def _count(rng: random.Random, size: int, colours: list[str], most: int, distractors: bool) -> Item:
    image, draw = _canvas(size)
    count = rng.randint(1, most)
    colour, kind = rng.choice(colours), rng.choice(KINDS)
    side = size // 3 if most <= 4 else size // 4
    others = rng.randint(0, 2) if distractors else 0
    spots = _place(rng, size, count + others, side)
    other_colour = rng.choice([c for c in colours if c != colour])
    for i, (x, y) in enumerate(spots):
        fill = COLOURS[colour] if i < count else COLOURS[other_colour]
        _draw_shape(draw, kind, (x + 2, y + 2, x + side - 3, y + side - 3), fill)
    text = (
        f"<image>How many {colour} {kind}s are there?"
        if distractors
        else "<image>How many shapes are there?"
    )
    return Item(text, str(count), None, image, "count")


def area_question(rng: random.Random, size: int, colours: list[str]) -> Item:
    image, draw = _canvas(size)
    cells = 8
    step = size // cells
    for i in range(cells + 1):
        draw.line([(i * step, 0), (i * step, cells * step)], fill=(200, 200, 200))
        draw.line([(0, i * step), (cells * step, i * step)], fill=(200, 200, 200))
    w, h = rng.randint(1, 4), rng.randint(1, 4)
    x, y = rng.randint(0, cells - w), rng.randint(0, cells - h)
    draw.rectangle(
        (x * step, y * step, (x + w) * step, (y + h) * step), fill=COLOURS[rng.choice(colours)]
    )
    return Item(
        "<image>The grid has unit squares. What is the area of the filled rectangle?",
        str(w * h),
        None,
        image,
        "area",
    )


def _count_up_to_4(rng: random.Random, size: int, colours: list[str]) -> Item:
    return _count(rng, size, colours, 4, False)


def _count_among_distractors(rng: random.Random, size: int, colours: list[str]) -> Item:
    return _count(rng, size, colours, 9, True)


# difficulty -> (colours used, question kinds drawn from)
LEVELS: dict[str, tuple[list[str], list[Callable[[random.Random, int, list[str]], Item]]]] = {
    "colour": (list(COLOURS)[:4], [colour_question]),
    "easy": (list(COLOURS)[:4], [colour_question, kind_question]),
    "medium": (list(COLOURS), [colour_question, kind_question, _count_up_to_4]),
    "hard": (
        list(COLOURS),
        [colour_question, kind_question, _count_up_to_4, _count_among_distractors, area_question],
    ),
}


def generate(
    split: str, *, size: int, difficulty: str, seed: int, image_size: int
) -> Iterator[dict[str, Any]]:
    """Rows of the prompt contract (before templating): problem, answer, images, choices, meta."""
    rng = random.Random(f"mgpo-shapes/{seed}/{split}")
    colours, tasks = LEVELS[difficulty]
    for index in range(size):
        item = rng.choice(tasks)(rng, image_size, colours)
        yield {
            "id": f"shapes-{split}-{index:06d}",
            "problem": item.question,
            "answer": item.answer,
            "images": [item.image],
            "choices": item.choices,
            "where": f"shapes[{split}] item {index}",
            "base": None,
            "meta": {"task": item.task, "difficulty": difficulty, "seed": seed},
        }
