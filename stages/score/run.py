"""The score stage's entry function: rollout shards (+ their prompts) -> score shards."""

from __future__ import annotations

import contextlib
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
from stages.processes import Processes
from stages.processes import processes as job_processes
from stages.schemas import SCORES, with_hf_features
from stages.score.runner import ScorePool
from stages.shards import ShardSet, ShardWriter, check_target, open_shards, read_part


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


def _gold(options: ScoreOptions, prompts_dir: str, rollouts: ShardSet) -> dict[str, dict]:
    """The prompt fields a reward reads, for every prompt the rollouts answer."""
    wanted_ids = {row["prompt_id"] for row in rollouts.iter_rows(columns=["prompt_id"])}
    prompts = open_shards(prompts_dir, "prompts")
    gold = {
        row["id"]: row
        for row in prompts.iter_rows(columns=["id", "prompt", "answer", "choices", "meta"])
        if row["id"] in wanted_ids
    }
    missing = sorted(wanted_ids - set(gold))
    if missing:
        raise MgpoError(f"{options.rollouts}: prompt_id '{missing[0]}' is not in {prompts_dir}")
    return gold


def _items(part: Path, gold: dict[str, dict]) -> Iterator[dict[str, Any]]:
    """The scoring items of one rollout part, in its row order."""
    for row in read_part(part, ["prompt_id", "sample", "response"]).to_pylist():
        prompt = gold[row["prompt_id"]]
        yield {
            **row,
            "answer": prompt["answer"],
            "choices": prompt["choices"],
            "prompt": prompt["prompt"],
            "meta": json.loads(prompt["meta"]) if prompt.get("meta") else {},
        }


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
    options: ScoreOptions,
    *,
    quiet: bool = False,
    pool: ScorePool | None = None,
    processes: Processes | None = None,
) -> ScoreSummary:
    """Score every rollout; the reward components become columns beside ``reward``.

    Score part ``j`` holds the scores of rollout part ``j``, row for row. ``pool``: workers from
    ``score_pool`` for the same reward settings, kept by a caller that scores many times (the
    trainer, every step). ``processes``: the job's processes (default: those the launcher
    describes); each scores the parts it owns (``j % K``), the main process seals the set.
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
    procs = processes if processes is not None else job_processes()
    rollouts = open_shards(options.rollouts, "rollouts")
    gold = _gold(options, prompts_dir, rollouts)
    parts = [(j, f) for j, f in enumerate(rollouts.files) if procs.owns(j)]
    config = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("overwrite", "out")}
    config["prompts"] = str(
        Path(prompts_dir).resolve()
    )  # the answers these scores were read against
    producer = {"command": "mgpo score", "stage": "score", "config": config}
    totals = [0, 0.0, 0, 0]  # items, reward sum, timed out, non-finite
    with contextlib.ExitStack() as stack:
        if pool is None:  # workers for all of this process's parts
            pool = stack.enter_context(score_pool(options))
        writer = stack.enter_context(
            ShardWriter(
                out, "scores", overwrite=options.overwrite, producer=producer, processes=procs
            )
        )
        bar = stack.enter_context(progress())
        share = sum(
            part["rows"] for j, part in enumerate(rollouts.manifest["parts"]) if procs.owns(j)
        )
        task = bar.add_task("score", total=share, visible=not quiet and procs.is_main)
        for index, part in parts:
            rows = []
            for scored in pool.score(_items(part, gold)):
                rows.append(scored)
                bar.advance(task)
            writer.schema = with_hf_features(_schema_for(rows))
            writer.write_part(rows, index=index)
            totals = [
                totals[0] + len(rows),
                totals[1] + sum(r["reward"] for r in rows),
                totals[2] + sum(bool(r.get("timed_out")) for r in rows),
                totals[3] + sum(bool(r.get("non_finite")) for r in rows),
            ]
    items, reward, timed_out, non_finite = (
        sum(column) for column in zip(*procs.gather(totals), strict=True)
    )
    if timed_out and not quiet and procs.is_main:
        console.print(
            f"[yellow]{timed_out} item(s) hit the {options.timeout_s:g}s limit and scored 0[/]"
        )
    if non_finite and not quiet and procs.is_main:
        console.print(f"[yellow]{non_finite} item(s) got a NaN or infinite reward and scored 0[/]")
    return ScoreSummary(out, int(items), reward / max(items, 1), int(timed_out), int(non_finite))


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
