"""The score stage's entry function: rollout shards (+ their prompts) -> score shards."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.config import PositiveFloat, PositiveInt, UnitFloat, check_values
from stages.console import console, progress
from stages.errors import MgpoError
from stages.outputs import check_writable
from stages.schemas import SCORES
from stages.score.runner import ScorePool, score_items
from stages.shards import ShardWriter, check_target, open_shards


@dataclass(frozen=True)
class ScoreOptions:
    rollouts: str
    prompts: str | None = None  # default: the prompt shards the rollouts were made from
    reward: str = "math"
    workers: PositiveInt = 1
    timeout_s: PositiveFloat = 5.0
    format_weight: UnitFloat | None = None  # None: the reward's own default (0.1 for math)
    out: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_values(self, flags={"timeout_s": "--timeout"})

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        rollouts = Path(self.rollouts)
        name = rollouts.name.removesuffix("-rollouts").removesuffix("rollouts") or "run"
        return rollouts.parent / (f"{name}-scores" if name != "run" else "scores")


@dataclass(frozen=True)
class ScoreSummary:
    path: Path
    items: int
    reward_mean: float
    timed_out: int
    non_finite: int = 0  # items whose reward was NaN or infinite (scored 0)


def prompts_of(rollouts_dir: str, given: str | None) -> str:
    """The prompt shards behind a rollout set: given explicitly, or named in its manifest."""
    if given:
        return given
    manifest = open_shards(rollouts_dir, "rollouts").manifest
    prompts = manifest.get("producer", {}).get("config", {}).get("prompts")
    if not prompts:
        raise MgpoError(
            f"{rollouts_dir}: manifest does not name its prompt shards; pass --prompts DIR"
        )
    if not Path(prompts).is_dir():  # moved, or a relative path from another working directory
        raise MgpoError(
            f"{rollouts_dir}: its manifest names the prompt shards {prompts}, which are not "
            "there; pass --prompts DIR"
        )
    return prompts


def _items(options: ScoreOptions, prompts_dir: str) -> tuple[Iterator[dict[str, Any]], int]:
    rollouts = open_shards(options.rollouts, "rollouts")
    prompts = open_shards(prompts_dir, "prompts")
    wanted_ids = {row["prompt_id"] for row in rollouts.iter_rows(columns=["prompt_id"])}
    gold = {
        row["id"]: row
        for row in prompts.iter_rows(columns=["id", "prompt", "answer", "choices", "meta"])
        if row["id"] in wanted_ids
    }

    def items() -> Iterator[dict[str, Any]]:
        for row in rollouts.iter_rows(columns=["prompt_id", "sample", "response"]):
            prompt = gold.get(row["prompt_id"])
            if prompt is None:
                raise MgpoError(
                    f"{options.rollouts}: prompt_id '{row['prompt_id']}' is not in {prompts_dir}"
                )
            yield {
                **row,
                "answer": prompt["answer"],
                "choices": prompt["choices"],
                "prompt": prompt["prompt"],
                "meta": json.loads(prompt["meta"]) if prompt.get("meta") else {},
            }

    return items(), rollouts.num_rows


def _reward_options(options: ScoreOptions) -> dict[str, Any]:
    return {} if options.format_weight is None else {"format_weight": options.format_weight}


def score_pool(options: ScoreOptions) -> ScorePool:
    """Workers for ``options``' reward that ``run_score(..., pool=)`` can reuse across calls."""
    return ScorePool(
        options.reward,
        workers=options.workers,
        timeout_s=options.timeout_s,
        options=_reward_options(options),
    )


def run_score(
    options: ScoreOptions, *, quiet: bool = False, pool: ScorePool | None = None
) -> ScoreSummary:
    """Score every rollout; the reward components become columns beside ``reward``.

    ``pool``: workers from ``score_pool`` for the same reward settings, kept by a caller that
    scores many times (the trainer, every step).
    """
    if pool is not None and (pool.spec, pool.workers, pool.timeout_s, pool.options) != (
        options.reward,
        options.workers,
        options.timeout_s,
        _reward_options(options),
    ):
        raise MgpoError("run_score: the score pool was made for other reward settings")
    out = options.out_dir()
    # Refuse the output before scoring, not after minutes of work; and never write the scores
    # over their own inputs (with --overwrite that would delete them).
    prompts_dir = prompts_of(options.rollouts, options.prompts)
    if any(out.resolve() == Path(path).resolve() for path in (options.rollouts, prompts_dir)):
        raise MgpoError(f"--out {out}: is an input directory; choose another output directory")
    check_target(out, overwrite=options.overwrite)
    check_writable(out, "--out", beside=True)
    items, total = _items(options, prompts_dir)
    config = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("overwrite", "out")}
    config["prompts"] = str(
        Path(prompts_dir).resolve()
    )  # the answers these scores were read against
    producer = {"command": "mgpo score", "stage": "score", "config": config}
    rows: list[dict[str, Any]] = []
    with progress() as bar:
        task = bar.add_task("score", total=total, visible=not quiet)
        reward_options = _reward_options(options)
        scored_rows = (
            pool.score(items)
            if pool is not None
            else score_items(
                items,
                options.reward,
                workers=options.workers,
                timeout_s=options.timeout_s,
                options=reward_options,
            )
        )
        for scored in scored_rows:
            rows.append(scored)
            bar.advance(task)
    schema = _schema_for(rows)
    with ShardWriter(
        out, "scores", producer=producer, schema=schema, overwrite=options.overwrite
    ) as writer:
        writer.add(rows)
    timed_out = sum(bool(r.get("timed_out")) for r in rows)
    non_finite = sum(bool(r.get("non_finite")) for r in rows)
    mean = sum(r["reward"] for r in rows) / max(len(rows), 1)
    if timed_out and not quiet:
        console.print(
            f"[yellow]{timed_out} item(s) hit the {options.timeout_s:g}s limit and scored 0[/]"
        )
    if non_finite and not quiet:
        console.print(f"[yellow]{non_finite} item(s) got a NaN or infinite reward and scored 0[/]")
    return ScoreSummary(out, len(rows), mean, timed_out, non_finite)


def _schema_for(rows: list[dict[str, Any]]) -> pa.Schema:
    """The score contract plus one float column per extra reward component."""
    fields = list(SCORES)
    known = {f.name for f in fields}
    for row in rows[:1]:
        for key, value in row.items():
            if key in known:
                continue
            kind = (
                pa.bool_()
                if isinstance(value, bool)
                else pa.float32()
                if isinstance(value, int | float)
                else pa.string()
            )
            fields.append(pa.field(key, kind))
            known.add(key)
    return pa.schema(fields)
