"""Log-probabilities of given response tokens under a policy (the teacher-forced forward).

The trainer's current log-probs and the rollout engine's behaviour log-probs must mean the same
thing, ``log_softmax(logits / T)`` over the whole vocabulary at the sampling temperature ``T``,
or every importance ratio is off before training starts. This module is that one definition.
"""

from __future__ import annotations

from typing import Any

import torch

from stages.models.policy_io import Batch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """``log_softmax(logits / T)`` at ``targets``, in float32 (``T <= 0`` means ``T = 1``)."""
    scaled = logits.float()
    if temperature > 0 and temperature != 1.0:
        scaled = scaled / temperature
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def forward_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """Model inputs for a left-padded batch: text-only models need explicit positions, which
    Qwen-VL computes itself (3-D, from the attention mask) when images are present."""
    inputs = dict(batch.inputs)
    if "image_grid_thw" not in inputs:
        mask = inputs["attention_mask"]
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return inputs


def response_logprobs(model: Any, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of the response tokens of a batch from ``io.encode(rows, responses)``.

    The batch must be left-padded (the default), so every response ends in the last column:
    the result is ``(rows, longest response)``, response ``i`` in its last ``len_i`` columns
    (``batch.response_mask[:, -width:]`` marks them). Only the response logits are computed.
    Gradients flow; wrap in ``torch.no_grad()`` for behaviour log-probs.
    """
    if batch.response_mask is None:
        raise ValueError("the batch has no responses: encode it with responses")
    ids = batch.inputs["input_ids"]
    if bool(batch.inputs["attention_mask"][:, -1].eq(0).any()):
        raise ValueError("response_logprobs needs a left-padded batch")
    width = int(batch.response_mask.sum(dim=1).max())
    out = model(**forward_inputs(batch), use_cache=False, logits_to_keep=width + 1)
    logits = out.logits[:, -(width + 1) : -1]
    return token_logprobs(logits, ids[:, -width:], temperature)
