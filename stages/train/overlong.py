"""Training prompts longer than ``rollout.max_prompt_tokens``, found before the first step.

Counted with the policy's own processor, image tokens included (:mod:`stages.models.prompt_length`).
With ``data.filter_overlong`` (the default) they are dropped from the run, counted on the console
and listed with their lengths in ``RUN/overlong_prompts.json``; otherwise the run stops before it
starts, naming the first one and where it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.errors import MgpoError
from stages.models.policy_io import PolicyIO
from stages.models.prompt_length import overlong_error, overlong_prompts
from stages.shards import open_shards

FILE = "overlong_prompts.json"


def fitting_ids(
    io: PolicyIO, shards: str, limit: int, drop: bool
) -> tuple[list[str], list[tuple[str, int]]]:
    """The ids of ``shards`` in order without the overlong ones, and those ``(id, tokens)``."""
    prompts = open_shards(shards, "prompts")
    ids = [row["id"] for row in prompts.iter_rows(columns=["id"])]
    rows = prompts.iter_rows(columns=["id", "prompt", "images"])
    found = overlong_prompts(io, rows, limit, prompts.where)
    if found and not drop:
        advice = "set data.filter_overlong=true to drop such prompts, or raise the limit"
        raise overlong_error(
            prompts.where(found[0][0]), found[0], "rollout.max_prompt_tokens", limit, advice
        )
    dropped = {prompt_id for prompt_id, _ in found}
    kept = [i for i in ids if i not in dropped]
    if ids and not kept:
        raise MgpoError(
            f"{shards}: every prompt is longer than rollout.max_prompt_tokens {limit} tokens"
        )
    return kept, found


def write_report(run_dir: Path, limit: int, dropped: dict[str, list[tuple[str, int]]]) -> None:
    """``RUN/overlong_prompts.json``: the limit and each dropped prompt's id and length."""
    report = {
        "max_prompt_tokens": limit,
        **{
            split: [{"id": prompt_id, "tokens": tokens} for prompt_id, tokens in found]
            for split, found in dropped.items()
        },
    }
    tmp = run_dir / f".{FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(run_dir / FILE)
