"""Teacher-forced log-probs of sampled responses under the policy being trained.

The prompt and response are encoded exactly as the rollout engine encoded them (one ``PolicyIO``,
left padding, so every response ends in the last column). The model is called through its own
``forward`` (so a DDP/FSDP wrapper sees the call and synchronises gradients) with
``logits_to_keep`` = the longest response + 1: only response positions get logits, never the
prompt's. Log-probs and entropy then come from the chunked
:func:`stages.train.logprobs.logprobs_from_logits`, which never builds a second
``[tokens, vocab]`` log-softmax copy. Results are returned left-aligned: column ``j`` is the
``j``-th response token, as in the rollout shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stages.models.logprobs import forward_inputs
from stages.models.policy_io import PolicyIO
from stages.train.logprobs import logprobs_from_logits


@dataclass
class ResponseLogprobs:
    logp: Tensor  # [B, R] log-prob of each response token (0 on padding)
    entropy: Tensor | None  # [B, R]
    mask: Tensor  # [B, R] bool, True on response tokens


def response_logprobs(
    model: Any,
    io: PolicyIO,
    rows: Sequence[Mapping[str, Any]],
    responses: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> ResponseLogprobs:
    """Log-probs (at ``temperature``) of ``responses[i]`` following prompt ``rows[i]``."""
    device = next(model.parameters()).device
    batch = io.encode(rows, responses, padding_side="left").to(device)
    lengths = batch.response_mask.sum(1)
    width = max(int(lengths.max().item()), 1)
    out = model(**forward_inputs(batch), use_cache=False, logits_to_keep=width + 1)
    logits = out.logits[:, -(width + 1) : -1]  # position t-1 predicts token t
    targets = batch.inputs["input_ids"][:, -width:]
    result = logprobs_from_logits(
        logits,
        targets,
        temperature=temperature if temperature > 0 else 1.0,
        with_entropy=with_entropy,
    )
    # Right-aligned (row i's response fills its last len_i columns) -> left-aligned.
    columns = torch.arange(width, device=device)
    mask = columns[None, :] < lengths[:, None]
    source = ((width - lengths)[:, None] + columns[None, :]).clamp(max=width - 1)
    logp = torch.gather(result.logp, 1, source).masked_fill(~mask, 0.0)
    entropy = None
    if result.entropy is not None:
        entropy = torch.gather(result.entropy, 1, source).masked_fill(~mask, 0.0)
    return ResponseLogprobs(logp=logp, entropy=entropy, mask=mask)
