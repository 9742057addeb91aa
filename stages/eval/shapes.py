"""``shapes``: the built-in, offline benchmark (the held-out ``test`` split of ``mgpo prepare shapes``).

It lets the quick start evaluate a policy trained on the tiny recipe with no download:
``mgpo eval shapes --subset colour --model runs/tiny/final``. Items come from the prepare stage's generator with
its defaults (seed 0, 128 test items, 112-pixel images), so they are exactly the prompts
``mgpo prepare shapes --split test`` writes, never seen in training (splits use separate random
streams). ``--subset colour|easy|medium|hard`` picks the generator's difficulty (default easy; the
quick start trains and evaluates on colour).

Scoring is the ``short_answer`` reward's accuracy: the last ``\\boxed{}`` if there is one, else the
first word, equal to the answer ignoring case. Not part of ``mgpo eval all`` (the paper's suite).
"""

from __future__ import annotations

from typing import Any

from stages.eval.benchmark import Row, Subset, accuracy_summary
from stages.eval.generated import GeneratedBenchmark
from stages.score import short_answer_reward

SPLITS = {"train": 512, "validation": 64, "test": 128}  # the generator's default sizes
DIFFICULTIES = ("easy", "colour", "medium", "hard")  # the first is the default
TEMPLATE = "short_answer"  # what mgpo prepare shapes uses, so prompts match training


def build_row(raw: Row, index: int, split: str, images: list, query: str) -> Row:
    """A generated problem as a prompt row; choices go into the text as the template lists them."""
    choices = [str(c) for c in raw["choices"]] if raw.get("choices") else None
    problem = str(raw["problem"])
    if choices:
        problem += f" Choose from: {', '.join(choices)}."
    return {
        "id": str(raw["id"]),
        "prompt": problem,
        "images": images,
        "answer": str(raw["answer"]),
        "choices": choices,
        "source": "shapes",
        "meta": {**raw["meta"], "question_text": str(raw["problem"])},
    }


def extract(row: Row, response: str) -> str | None:
    return short_answer_reward(response, str(row["answer"]))["extracted"] or None


def check(row: Row, extracted: str | None) -> dict[str, Any]:
    normalised = (extracted or "").strip().lower()
    return {
        "correct": bool(normalised) and normalised == str(row["answer"]).strip().lower(),
        "normalised": normalised,
    }


def judge_hint(row: Row) -> str:
    return "the one word or number the response answers with"


BENCHMARK = GeneratedBenchmark(
    name="shapes",
    hub_id="(built-in)",
    splits=SPLITS,
    default_split="test",
    build_row=build_row,
    image_columns=("images",),
    extract=extract,
    check=check,
    summarise_rows=accuracy_summary(("task",)),
    judge_hint=judge_hint,
    subsets={d: Subset("difficulty", (d,)) for d in DIFFICULTIES},
    template=TEMPLATE,
    default_subset=DIFFICULTIES[0],
    notes="built-in; short_answer accuracy (last boxed answer or first word, ignoring case)",
)
