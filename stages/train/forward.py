"""Teacher-forced log-probs of sampled responses under the policy being trained.

The prompt and response are encoded exactly as the rollout engine encoded them (one ``PolicyIO``,
left padding, so every response ends in the last column). The model is called through its own
``forward`` (so a DDP/FSDP wrapper sees the call and synchronises gradients) with
``logits_to_keep`` = the longest response + 1: only response positions get logits, never the
prompt's. Log-probs and entropy then come from the chunked
:func:`stages.train.logprobs.logprobs_from_logits`, which never builds a second
``[tokens, vocab]`` log-softmax copy. Results are returned left-aligned: column ``j`` is the
``j``-th response token, as in the rollout shards.

With ``shared_prefix`` the samples that share a prompt row go through one packed row instead
(:mod:`stages.train.shared_prefix`): same log-probs, entropies and gradients, the prompt encoded
once. Whether a step packs is decided once for the step
(:func:`~stages.train.shared_prefix.decide`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stages.models.logprobs import forward_inputs
from stages.models.policy_io import PolicyIO
from stages.train import shared_prefix as sp
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
    shared_prefix: bool = False,
) -> ResponseLogprobs:
    """Log-probs (at ``temperature``) of ``responses[i]`` following prompt ``rows[i]``;
    ``shared_prefix`` packs the samples that share a row object into one row."""
    device = next(model.parameters()).device
    temperature = temperature if temperature > 0 else 1.0
    if shared_prefix:
        return _packed_logprobs(model, io, rows, responses, device, temperature, with_entropy)
    batch = io.encode(rows, responses, padding_side="left").to(device)
    lengths = batch.response_mask.sum(1)
    width = max(int(lengths.max().item()), 1)
    out = model(**forward_inputs(batch), use_cache=False, logits_to_keep=width + 1)
    logits = out.logits[:, -(width + 1) : -1]  # position t-1 predicts token t
    targets = batch.inputs["input_ids"][:, -width:]
    result = logprobs_from_logits(
        logits, targets, temperature=temperature, with_entropy=with_entropy
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


def _packed_logprobs(
    model: Any,
    io: PolicyIO,
    rows: Sequence[Mapping[str, Any]],
    responses: Sequence[Sequence[int]],
    device: torch.device,
    temperature: float,
    with_entropy: bool,
) -> ResponseLogprobs:
    """Log-probs of the packed forward, only the predicting positions' logits computed."""
    inner = getattr(model, "module", model)  # under DDP, the model it wraps
    packed = sp.pack(
        io,
        rows,
        responses,
        rope_index=getattr(inner.base_model, "get_rope_index", None),
        attention=sp.attention_implementation(inner),
    )
    keep = torch.unique(packed.index % packed.width)  # sorted positions needed in any row
    inputs = {k: v.to(device) for k, v in packed.inputs.items()}
    out = model(**inputs, use_cache=False, logits_to_keep=keep.to(device))
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    rows, columns = packed.index // packed.width, packed.index % packed.width
    flat = (rows * len(keep) + torch.searchsorted(keep, columns)).to(device)
    result = logprobs_from_logits(
        logits[flat], packed.targets.to(device), temperature=temperature, with_entropy=with_entropy
    )
    mask = packed.mask.to(device)
    entropy = None if result.entropy is None else result.entropy.masked_fill(~mask, 0.0)
    return ResponseLogprobs(result.logp.masked_fill(~mask, 0.0), entropy, mask)
