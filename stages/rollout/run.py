"""The rollout stage's entry function: prompt shards + a policy -> rollout shards.

Prompts are taken in fixed batches (``batch_prompts``) and each batch becomes one Parquet part,
sampled with a seed derived from the run seed and the batch's first prompt. A rerun after a kill
finds the finished parts in the staging directory, skips those prompts, and produces exactly the
rows an uninterrupted run would have: no duplicates, nothing missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import TextColumn

from mgpo_cli.console import console, progress
from mgpo_cli.errors import MgpoError
from mgpo_cli.shards import ShardWriter, is_complete, open_shards, prompt_row
from stages.rollout.backends import make_engine
from stages.rollout.engine_api import Engine


@dataclass(frozen=True)
class RolloutOptions:
    prompts: str
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    backend: str = "hf"
    n: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 2048
    batch_prompts: int = 64  # prompts per part (and per resumable unit)
    micro_batch: int = 64  # sequences (prompt x sample) per generate call (hf)
    seed: int = 0
    policy_step: int = 0
    limit: int | None = None
    prompt_ids: tuple[str, ...] | None = (
        None  # only these prompts, in this order (the trainer's batch)
    )
    out: str | None = None
    overwrite: bool = False
    dtype: str = "auto"
    device: str = "auto"
    gpu_memory_utilization: float = 0.6
    tensor_parallel_size: int = 1
    max_model_len: int = 4096

    def out_dir(self) -> Path:
        return (
            Path(self.out)
            if self.out
            else Path(self.prompts).parent / f"{Path(self.prompts).name}-rollouts"
        )

    def sampling(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }


def batch_seed(seed: int, first_prompt_id: str) -> int:
    """A per-batch seed that does not depend on which batches ran before (so resume is exact)."""
    digest = hashlib.sha256(f"{seed}/{first_prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _prompt_batches(options: RolloutOptions) -> tuple[Iterator[list[dict[str, Any]]], int]:
    prompts = open_shards(options.prompts, "prompts")
    if options.prompt_ids is not None:
        wanted = {pid: i for i, pid in enumerate(options.prompt_ids)}
        rows = [r for r in prompts.iter_rows() if r["id"] in wanted]
        missing = set(wanted) - {r["id"] for r in rows}
        if missing:
            raise MgpoError(
                f"{options.prompts}: prompt id(s) not found: {', '.join(sorted(missing)[:3])}"
            )
        rows.sort(key=lambda r: wanted[r["id"]])
        total = len(rows)
        source: Iterator[dict[str, Any]] = iter(rows)
    else:
        total = min(prompts.num_rows, options.limit) if options.limit else prompts.num_rows
        source = prompts.iter_rows()

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

    return batches(), total


def run_rollout(
    options: RolloutOptions, engine: Engine | None = None, *, quiet: bool = False
) -> Path:
    """Sample ``n`` responses per prompt and write them, with behaviour log-probs, as shards.

    ``engine`` lets a caller (the trainer) keep one live engine across steps; without it one is
    built from ``options.model`` and ``options.backend``.
    """
    out = options.out_dir()
    if is_complete(out) and not options.overwrite:
        raise MgpoError(
            f"{out}: already holds a complete shard set (pass --overwrite to replace it)"
        )
    batches, total = _prompt_batches(options)
    config = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("overwrite", "out")}
    producer = {"command": "mgpo rollout", "stage": "rollout", "config": config}
    if engine is None:
        engine = make_engine(options.backend, options)
    sampling = options.sampling()
    with ShardWriter(
        out,
        "rollouts",
        producer=producer,
        overwrite=options.overwrite,
        resume=True,
        keep_partial=True,
    ) as writer:
        done = {row["prompt_id"] for row in writer.existing_rows(["prompt_id"])}
        tokens = 0
        started = time.perf_counter()
        speed = TextColumn("{task.fields[speed]}")
        with progress(speed) as bar:
            task = bar.add_task("rollout", total=total, speed="", visible=not quiet)
            if done:
                console.print(
                    f"resuming {out}: {len(done)} prompts already done"
                ) if not quiet else None
            for batch in batches:
                if all(row["id"] in done for row in batch):
                    bar.advance(task, len(batch))
                    continue
                rows = [prompt_row(row) for row in batch]
                samples = engine.generate(
                    rows, **sampling, seed=batch_seed(options.seed, batch[0]["id"])
                )
                records = [
                    {
                        "prompt_id": row["id"],
                        "sample": index,
                        "response": sample.response,
                        "response_ids": sample.response_ids,
                        "logprobs": sample.logprobs,
                        "finish_reason": sample.finish_reason,
                        "policy_step": options.policy_step,
                    }
                    for row, row_samples in zip(rows, samples, strict=True)
                    for index, sample in enumerate(row_samples)
                ]
                writer.write_part(records)
                tokens += sum(len(r["response_ids"]) for r in records)
                elapsed = time.perf_counter() - started
                bar.update(
                    task, advance=len(batch), speed=f"{tokens / max(elapsed, 1e-9):,.0f} tok/s"
                )
    return out
