"""One training step's samples: rollouts joined with their scores and prompts, plus advantages.

Dynamic sampling (DAPO) and GPG's valid-sample threshold both work on whole groups (the ``n``
samples of one prompt), so samples are kept grouped until the batch is final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stages.shards import open_shards
from stages.train import advantages as adv
from stages.train import algos
from stages.train.config import AlgoConfig


@dataclass
class Group:
    prompt_id: str
    response_ids: list[list[int]]
    rollout_logprobs: list[list[float]]
    rewards: list[float]
    scores: list[dict[str, Any]]
    finish_reasons: list[str]

    @property
    def degenerate(self) -> bool:
        """All rewards equal: every advantage is zero, the group teaches nothing."""
        return max(self.rewards) - min(self.rewards) <= 1e-12


@dataclass
class StepBatch:
    groups: list[Group] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(g.rewards) for g in self.groups)

    def flat(self) -> tuple[list[str], list[list[int]], list[list[float]], torch.Tensor, list[int]]:
        prompt_ids, responses, logprobs, rewards, group_ids = [], [], [], [], []
        for index, group in enumerate(self.groups):
            for ids, lps, reward in zip(
                group.response_ids, group.rollout_logprobs, group.rewards, strict=True
            ):
                prompt_ids.append(group.prompt_id)
                responses.append(ids)
                logprobs.append(lps)
                rewards.append(reward)
                group_ids.append(index)
        return (
            prompt_ids,
            responses,
            logprobs,
            torch.tensor(rewards, dtype=torch.float64),
            group_ids,
        )


def read_groups(rollouts_dir: str, scores_dir: str) -> list[Group]:
    """Groups in the rollout shards' prompt order, with each sample's score row attached."""
    scores = {
        (row["prompt_id"], row["sample"]): row
        for row in open_shards(scores_dir, "scores").iter_rows()
    }
    groups: dict[str, Group] = {}
    for row in open_shards(rollouts_dir, "rollouts").iter_rows():
        score = scores[(row["prompt_id"], row["sample"])]
        group = groups.setdefault(row["prompt_id"], Group(row["prompt_id"], [], [], [], [], []))
        group.response_ids.append(list(row["response_ids"]))
        group.rollout_logprobs.append(list(row["logprobs"]))
        group.rewards.append(float(score["reward"]))
        group.scores.append(score)
        group.finish_reasons.append(row["finish_reason"])
    return list(groups.values())


@dataclass
class StepSamples:
    """The samples one update trains on, flat, with their advantages (float32, ``[N]``)."""

    prompt_ids: list[str]
    responses: list[list[int]]
    engine_logprobs: list[list[float]]
    rewards: torch.Tensor
    group_ids: list[int]
    advantages: torch.Tensor
    left_out: int  # MC-GRPO: median samples left out of the update


def step_samples(algo: AlgoConfig, batch: StepBatch) -> StepSamples:
    """Flatten the batch and compute advantages: the algorithm's estimator, with the recipe's
    ``scale_rewards`` and ``baseline``. With ``baseline: median`` (MC-GRPO) the median sample of
    each odd group is left out of the update, after the group statistics used it."""
    prompt_ids, responses, engine, rewards, group_ids = batch.flat()
    estimator = algos.ADVANTAGE_ESTIMATOR[algo.name]
    scale = algo.scale_rewards or adv.ESTIMATOR_SCALE[estimator]
    advantages = adv.estimate(rewards, group_ids, baseline=algo.baseline, scale=scale)
    keep = list(range(len(responses)))
    if algo.baseline == "median":
        pivots = adv.median_pivots(rewards, group_ids).tolist()
        keep = [i for i in keep if not pivots[i]]
    return StepSamples(
        [prompt_ids[i] for i in keep],
        [responses[i] for i in keep],
        [engine[i] for i in keep],
        rewards[keep],
        [group_ids[i] for i in keep],
        advantages[keep].to(torch.float32),
        len(responses) - len(keep),
    )
