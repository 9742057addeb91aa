"""What the loss of each micro-batch receives besides its log-probs and advantages.

- the recipe's loss options (:func:`loss_params`);
- a mini-batch's global normalisers (:func:`normalisers`), so micro-batch losses add up;
- the step-wide tensors, cut and padded to a micro-batch (:func:`micro_tensors`): reference
  log-probs (KL), the engine's behaviour log-probs (rollout correction), and the step's
  entropies with their threshold (high-entropy mask).

The high-entropy mask keeps the top ``rho`` of *the step's* valid tokens, so its threshold must
be known before the first micro-batch: it comes from the no-grad forward that also gives the
frozen old log-probs (:meth:`Policy.frozen_logprobs_and_entropy`), which is therefore forced on
even for a single on-policy optimizer step (one extra no-grad forward, about a third of a
forward+backward). Which tokens are kept is fixed for the whole step from those entropies (like
the old log-probs), so the kept-token counts the normalisers use are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stages.errors import MgpoError
from stages.train import algos
from stages.train.config import TrainConfig, loss_options
from stages.train.losses.modifiers import entropy_threshold


def loss_params(config: TrainConfig) -> dict[str, Any]:
    """The algorithm's options from the recipe (only those the algorithm accepts), plus the
    padded width of the paper's selection listing (the rollout's ``max_new_tokens``)."""
    accepted = algos.options(config.algo.name)
    params = loss_options(config.algo, accepted)
    if params.get("selection") == "paper":
        params["padded_width"] = float(config.rollout.max_new_tokens)
    return params


def wants_engine_logprobs(config: TrainConfig) -> bool:
    return config.algo.rollout_correction not in (None, "none")


@dataclass
class StepTensors:
    """Per-sample tensors for the whole step (each ``[len(response)]``, on the CPU)."""

    ref: list[torch.Tensor] | None = None  # reference log-probs for the KL term
    engine: list[torch.Tensor] | None = None  # behaviour log-probs of the rollout engine
    entropy: list[torch.Tensor] | None = None  # frozen entropies for the high-entropy mask
    threshold: float | None = None  # the step's entropy threshold
    kept: list[int] = field(default_factory=list)  # tokens each sample keeps under the mask


def step_tensors(
    config: TrainConfig,
    engine_logprobs: list[list[float]],
    responses: list[list[int]],
    ref: list[torch.Tensor] | None,
    entropy: list[torch.Tensor] | None,
) -> StepTensors:
    """Collect the step-wide tensors; the entropy threshold is over every valid token."""
    out = StepTensors(ref=ref)
    if wants_engine_logprobs(config):
        for i, (lps, ids) in enumerate(zip(engine_logprobs, responses, strict=True)):
            if len(lps) != len(ids):
                raise MgpoError(
                    f"algo.rollout_correction needs the engine's log-prob of every token; "
                    f"sample {i} has {len(lps)} for {len(ids)} tokens"
                )
        out.engine = [torch.tensor(lps, dtype=torch.float32) for lps in engine_logprobs]
    if entropy is not None and config.algo.entropy_top is not None:
        flat = torch.cat(entropy) if entropy else torch.zeros(0)
        threshold = entropy_threshold(
            flat, torch.ones_like(flat, dtype=torch.bool), config.algo.entropy_top
        )
        out.entropy, out.threshold = entropy, threshold
        out.kept = [int((e >= threshold).sum()) for e in entropy]
    return out


def normalisers(
    name: str, mini: list[int], responses: list[list[int]], tensors: StepTensors
) -> dict[str, float]:
    """The mini-batch's global counts, for the options ``name`` takes: sequences, tokens (the
    kept ones under the high-entropy mask) and the longest response."""
    lengths = [len(responses[i]) for i in mini]
    tokens = sum(tensors.kept[i] for i in mini) if tensors.threshold is not None else sum(lengths)
    counts = {
        "num_seqs": float(len(mini)),
        "num_tokens": float(max(tokens, 1)),
        "max_len": float(max(max(lengths), 1)),
    }
    accepted = algos.options(name)
    return {k: v for k, v in counts.items() if k in accepted}


def micro_tensors(
    tensors: StepTensors, indices: list[int], width: int, device: torch.device
) -> dict[str, Any]:
    """The step-wide tensors of samples ``indices``, padded to ``width`` columns: the keyword
    arguments of the loss for one micro-batch (``entropy`` only under the high-entropy mask)."""
    out: dict[str, Any] = {}
    if tensors.ref is not None:
        out["ref_logp"] = pad([tensors.ref[i] for i in indices], width).to(device)
    if tensors.engine is not None:
        out["engine_logp"] = pad([tensors.engine[i] for i in indices], width).to(device)
    if tensors.entropy is not None:
        out["entropy"] = pad([tensors.entropy[i] for i in indices], width).to(device)
        out["entropy_threshold"] = tensors.threshold
    return out


def pad(values: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(values), width)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
    return out
