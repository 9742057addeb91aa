"""The rollout stage's entry function: prompt shards + a policy -> rollout shards.

Prompts are taken in fixed batches (``batch_prompts``) and batch ``j`` becomes the Parquet part
``part-0000j``. Every prompt's samples come from streams seeded by the run seed, the prompt's id
and the sample index (``engine_api.prompt_seed``), so they do not depend on the batching nor on
the number of processes. A rerun after a kill finds the finished parts in the staging directory,
skips them, and produces exactly the rows an uninterrupted run would have: no duplicates, nothing
missing. Staged parts are only resumed by a run with the same settings over the same prompt
content (the prompts' manifest hash is part of the producer record); a user error
(``MgpoError``) leaves nothing behind. Prompts longer than ``max_prompt_tokens`` (image tokens
included; with vLLM and no limit given, what its context leaves after ``max_new_tokens``) stop
the run before any is rolled out, naming the first, or with ``filter_overlong`` are dropped,
counted and listed in the manifest.

Under ``accelerate launch`` / ``torchrun`` (:mod:`stages.processes`) process ``r`` of ``K`` takes
batches ``r, r + K, r + 2K, ...``, in rounds: every process calls its engine once per round, with
an empty batch when it has none left (or its part is done), because some engines generate
together (hf under FSDP, vLLM tensor-parallel groups). Each writes its own parts of the one shard
set; the main process seals it when all are there.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import TextColumn

from stages.config import NonNegativeFloat, OpenUnitFloat, PositiveInt, check_values
from stages.console import console, progress
from stages.errors import MgpoError
from stages.models.prompt_length import overlong_error, overlong_prompts
from stages.outputs import check_writable
from stages.processes import Processes
from stages.processes import processes as job_processes
from stages.rollout.backends import make_engine
from stages.rollout.engine_api import Engine
from stages.shards import ShardSet, ShardWriter, check_target, open_shards, prompt_row


@dataclass(frozen=True)
class RolloutOptions:
    prompts: str
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    backend: str = "hf"
    n: PositiveInt = 5
    temperature: NonNegativeFloat = 1.0
    top_p: OpenUnitFloat = 1.0
    max_new_tokens: PositiveInt = 2048
    batch_prompts: PositiveInt = 64  # prompts per part (and per resumable unit)
    micro_batch: PositiveInt = 64  # sequences (prompt x sample) per generate call (hf)
    seed: int = 0
    policy_step: int = 0
    limit: PositiveInt | None = None
    prompt_ids: tuple[str, ...] | None = (
        None  # only these prompts, in this order (the trainer's batch)
    )
    out: str | None = None
    overwrite: bool = False
    dtype: str = "auto"
    device: str = "auto"
    gpu_memory_utilization: OpenUnitFloat = 0.6
    tensor_parallel_size: PositiveInt = 1
    max_model_len: PositiveInt = 4096
    max_prompt_tokens: PositiveInt | None = None  # None: no limit (vllm: its context's)
    filter_overlong: bool = False  # drop longer prompts instead of stopping
    colocate: bool = False  # vllm: the trainer's engine, in this process (see vllm_setup)

    def __post_init__(self) -> None:
        check_values(self, flags={"n": "-n"})

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        prompts = Path(self.prompts)
        if prompts.name in ("", ".", ".."):  # '.' has no name to put '-rollouts' after
            prompts = prompts.resolve()
        return prompts.parent / f"{prompts.name}-rollouts"

    def sampling(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }


def _prompt_batches(
    options: RolloutOptions, prompts: ShardSet
) -> tuple[Iterator[list[dict[str, Any]]], list[str]]:
    """The batches of prompt rows, and the ids of all the prompts to roll out, in order."""
    if options.prompt_ids is not None:
        wanted = {pid: i for i, pid in enumerate(options.prompt_ids)}
        rows = [r for r in prompts.iter_rows() if r["id"] in wanted]
        missing = set(wanted) - {r["id"] for r in rows}
        if missing:
            raise MgpoError(
                f"{options.prompts}: prompt id(s) not found: {', '.join(sorted(missing)[:3])}"
            )
        rows.sort(key=lambda r: wanted[r["id"]])
        ids = [r["id"] for r in rows]
        source: Iterator[dict[str, Any]] = iter(rows)
    else:
        total = prompts.num_rows if options.limit is None else min(prompts.num_rows, options.limit)
        ids = [r["id"] for r in itertools.islice(prompts.iter_rows(columns=["id"]), total)]
        source = prompts.iter_rows()
    # Rows are keyed by prompt id downstream (resume, scoring): an id may appear only once.
    seen: set[str] = set()
    for pid in ids:
        if pid in seen:
            raise MgpoError(f"{options.prompts}: prompt id {pid!r} appears more than once")
        seen.add(pid)
    total = len(ids)

    def batches() -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        for index, row in enumerate(source):
            if index >= total:
                break
            batch.append(row)
            if len(batch) == options.batch_prompts:
                yield batch
                batch = []
        if batch:
            yield batch

    return batches(), ids


def _check(options: RolloutOptions, out: Path) -> None:
    """Everything about the options and the output that can be refused before a model loads."""
    if out.resolve() == Path(options.prompts).resolve():
        raise MgpoError(f"--out {out}: is the prompts directory; choose another output directory")
    check_target(out, overwrite=options.overwrite)
    check_writable(out, "--out", beside=True)


def _decoded(prompts: ShardSet, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prompt rows with their images decoded; a bad row names its part, row and column."""
    rows = []
    for row in batch:
        try:
            rows.append(prompt_row(row))
        except MgpoError as error:
            raise MgpoError(f"{prompts.where(row['id'])}: {error}") from None
    return rows


def _overlong(
    options: RolloutOptions, prompts: ShardSet, engine: Engine, report: bool = True
) -> set[str]:
    """Ids of the prompts to drop for being too long; MgpoError on the first unless
    ``filter_overlong`` (see the module docstring)."""
    limit, option = options.max_prompt_tokens, "--max-prompt-tokens"
    if limit is None and options.backend == "vllm":
        limit = options.max_model_len - options.max_new_tokens
        option = f"vLLM's context ({options.max_model_len}) less --max-new-tokens:"
        if limit < 1:
            raise MgpoError(f"--max-new-tokens {options.max_new_tokens} fills vLLM's whole context")
    io = getattr(engine, "io", None)
    if limit is None or io is None:
        return set()
    rows = prompts.iter_rows(columns=["id", "prompt", "images"])
    if options.prompt_ids is not None:
        wanted = set(options.prompt_ids)
        rows = (row for row in rows if row["id"] in wanted)
    else:
        rows = itertools.islice(rows, options.limit)
    found = overlong_prompts(io, rows, limit, prompts.where)
    if found and not options.filter_overlong:
        advice = "pass --filter-overlong to drop such prompts, or allow longer ones"
        raise overlong_error(prompts.where(found[0][0]), found[0], option, limit, advice)
    if found and report:
        console.print(
            f"[yellow]{len(found)} prompt(s) longer than {limit} tokens dropped"
            f" (first: {found[0][0]!r}, {found[0][1]} tokens)[/]"
        )
    return {prompt_id for prompt_id, _ in found}


def _check_device(device: str) -> None:
    """``--device`` names a device torch has here (else loading fails with a traceback)."""
    import torch

    if device == "auto":
        return
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError):
        raise MgpoError(f"--device {device}: not a device (auto, cpu, cuda, cuda:N)") from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (where.index or 0) >= count:
            raise MgpoError(f"--device {device}: this machine has {count} CUDA device(s)")


def run_rollout(
    options: RolloutOptions,
    engine: Engine | None = None,
    *,
    quiet: bool = False,
    processes: Processes | None = None,
) -> Path:
    """Sample ``n`` responses per prompt and write them, with behaviour log-probs, as shards.

    ``engine`` lets a caller (the trainer) keep one live engine across steps; without it one is
    built from ``options.model`` and ``options.backend``. ``processes``: the job's processes
    (default: those the launcher describes, see :mod:`stages.processes`); each rolls out its
    share of the batches.
    """
    out = options.out_dir()
    _check(options, out)
    if engine is None and options.backend == "hf":
        _check_device(options.device)
    prompts = open_shards(options.prompts, "prompts")
    batches, ids = _prompt_batches(options, prompts)
    total = len(ids)
    procs = processes if processes is not None else job_processes()
    if engine is None:
        engine = make_engine(options.backend, options)
    skip = _overlong(options, prompts, engine, report=procs.is_main)
    config = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("overwrite", "out")}
    # Absolute, so `mgpo score` finds the prompts from any working directory.
    config["prompts"] = str(Path(options.prompts).resolve())
    producer = {
        "command": "mgpo rollout",
        "stage": "rollout",
        "config": config,
        # Staged parts of a run over other prompt content (re-prepared in place) are not resumed.
        "prompts_sha256": prompts.manifest.get("content_sha256"),
    }
    if skip:
        producer["overlong_prompts"] = sorted(skip)
    sampling = options.sampling()
    count = -(-total // options.batch_prompts)  # batches
    mine = [i for i in range(count) if procs.owns(i)]
    with ShardWriter(
        out,
        "rollouts",
        producer=producer,
        overwrite=options.overwrite,
        resume=True,
        keep_partial=True,
        processes=procs,
    ) as writer:
        done = [i for i in mine if writer.has_part(i)]
        owned = ((i, b) for i, b in enumerate(batches) if procs.owns(i))

        def size(index: int) -> int:  # prompts rolled out in batch ``index``
            batch = ids[index * options.batch_prompts : (index + 1) * options.batch_prompts]
            return sum(pid not in skip for pid in batch)

        tokens = 0
        started = time.perf_counter()
        speed = TextColumn("{task.fields[speed]}")
        with progress(speed) as bar:
            skipped = sum(map(size, done))
            if done and not quiet and procs.is_main:
                console.print(f"resuming {out}: {skipped} prompts already done")
            # Prompts done before start as the task's starting point, not as progress made now,
            # so the ETA is not skewed by batches skipped in no time. (The main process shows
            # its own share.)
            task = bar.add_task(
                "rollout",
                total=sum(map(size, mine)),
                completed=skipped,
                speed="",
                visible=not quiet and procs.is_main,
            )
            try:
                for _ in range(procs.rounds(count)):
                    index, batch = next(owned, (None, []))
                    todo = index is not None and index not in done
                    batch = [row for row in batch if row["id"] not in skip] if todo else []
                    rows = _decoded(prompts, batch)
                    # Called every round, also with no rows: engines may generate together.
                    samples = engine.generate(rows, **sampling, seed=options.seed)
                    if not todo:
                        continue
                    records = _records(rows, samples, options.policy_step)
                    writer.write_part(records, index=index)
                    tokens += sum(len(r["response_ids"]) for r in records)
                    elapsed = time.perf_counter() - started
                    bar.update(
                        task, advance=len(rows), speed=f"{tokens / max(elapsed, 1e-9):,.0f} tok/s"
                    )
            except MgpoError:
                # Bad input (a prompt row the model cannot take, ...): a rerun needs new prompts
                # or options, so staged parts could never be resumed; leave nothing behind.
                writer.keep_partial = False
                raise
    return out


def _records(rows: list[dict[str, Any]], samples: list[list[Any]], step: int) -> list[dict]:
    return [
        {
            "prompt_id": row["id"],
            "sample": index,
            "response": sample.response,
            "response_ids": sample.response_ids,
            "logprobs": sample.logprobs,
            "finish_reason": sample.finish_reason,
            "policy_step": step,
        }
        for row, row_samples in zip(rows, samples, strict=True)
        for index, sample in enumerate(row_samples)
    ]
