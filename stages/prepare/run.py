"""The prepare stage's entry function: dataset problems -> validated, templated prompt shards."""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.console import console, progress
from stages.errors import MgpoError
from stages.images import fit_pixels, load_image
from stages.outputs import check_writable
from stages.prepare.datasets import DATASETS, DatasetSpec, PrepareOptions
from stages.prompt_templates import load_template, render
from stages.shards import ShardWriter, is_complete, open_shards


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        match = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" (did you mean '{match[0]}'?)" if match else ""
        raise MgpoError(
            f"unknown dataset '{name}'{hint}; known: {', '.join(sorted(DATASETS))} (see mgpo prepare --list)"
        )
    return DATASETS[name]


def prompt_rows(options: PrepareOptions, spec: DatasetSpec) -> Iterator[dict[str, Any]]:
    """Check each problem and build its prompt row (images fitted, template applied)."""
    template = load_template(options.template or spec.template)
    min_pixels = spec.min_pixels if options.min_pixels is None else options.min_pixels
    max_pixels = spec.max_pixels if options.max_pixels is None else options.max_pixels
    if min_pixels > max_pixels:
        raise MgpoError(f"--min-pixels {min_pixels} is larger than --max-pixels {max_pixels}")
    count = 0
    for index, problem in enumerate(spec.problems(options)):
        where = problem["where"]
        if not isinstance(problem["problem"], str) or not problem["problem"].strip():
            raise MgpoError(f"{where}: empty or missing problem text")
        if problem["answer"] is None or not str(problem["answer"]).strip():
            raise MgpoError(f"{where}: empty or missing answer")
        images = list(problem["images"] or [])
        placeholders = problem["problem"].count("<image>")
        if placeholders != len(images):
            raise MgpoError(
                f"{where}: the problem has {placeholders} <image> placeholder(s) but {len(images)} image(s)"
            )
        fitted = [
            fit_pixels(
                load_image(image, problem["base"], f"{where} image {i}"), min_pixels, max_pixels
            )
            for i, image in enumerate(images)
        ]
        choices = [str(c) for c in problem["choices"]] if problem.get("choices") else None
        yield {
            "id": problem.get("id") or f"{options.name}-{options.split}-{index:06d}",
            "prompt": render(template, problem["problem"], choices),
            "images": fitted,
            "answer": str(problem["answer"]),
            "choices": choices,
            "source": options.name,
            "meta": json.dumps(problem.get("meta") or {}, sort_keys=True),
        }
        count += 1
        if count == options.limit:  # stop before reading (and judging) the next problem
            break
    if count == 0:
        raise MgpoError(f"{options.name} split '{options.split}' is empty: nothing to prepare")


def _prepared_with(out: Path) -> dict[str, Any] | None:
    """The prepare settings of the intact prompt set in ``out`` (None if damaged or foreign)."""
    try:
        producer = open_shards(out, kind="prompts").manifest.get("producer")
    except MgpoError:
        return None
    return producer.get("config") if isinstance(producer, dict) else None


def run_prepare(options: PrepareOptions, command: str = "mgpo prepare") -> Path:
    """Write the prompt shards for one dataset split; returns the output directory."""
    spec = dataset_spec(options.name)
    if options.split not in spec.splits:
        raise MgpoError(
            f"--split {options.split}: {options.name} has splits {', '.join(spec.splits)}"
        )
    if options.source is not None and not Path(options.source).exists():
        raise MgpoError(f"--source {options.source}: no such file or directory")
    out = options.out_dir()
    config = {k: v for k, v in dataclasses.asdict(options).items() if k != "overwrite"}
    if is_complete(out) and not options.overwrite and _prepared_with(out) == config:
        console.print(f"{out} is already prepared with these settings; nothing to do")
        return out
    check_writable(out, "--out", beside=True)
    producer = {"command": command, "stage": "prepare", "config": config}
    with (
        ShardWriter(
            out, "prompts", producer=producer, overwrite=options.overwrite, rows_per_part=1024
        ) as writer,
        progress() as bar,
    ):
        task = bar.add_task(f"prepare {options.name}/{options.split}", total=options.limit)
        for row in prompt_rows(options, spec):
            writer.add([row])
            bar.advance(task)
    return out
