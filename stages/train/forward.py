"""Teacher-forced log-probs of sampled responses under the policy being trained.

The prompt and response are encoded exactly as the rollout engine encoded them (one ``PolicyIO``),
the model's last hidden states at the positions that predict each response token are gathered
into a ``[B, R]`` grid, and the ``lm_head`` is applied chunk by chunk
(:func:`stages.train.logprobs.logprobs_from_hidden`), so a 151,936-token vocabulary never
materialises a full ``[tokens, vocab]`` tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mgpo_cli.policy_io import PolicyIO
from stages.train.logprobs import logprobs_from_hidden


@dataclass
class ResponseLogprobs:
    logp: Tensor  # [B, R] log-prob of each response token (0 on padding)
    entropy: Tensor | None  # [B, R]
    mask: Tensor  # [B, R] bool, True on response tokens


def _decoder(model: Any) -> tuple[Any, Any]:
    """The body that returns hidden states, and the output projection."""
    head = model.get_output_embeddings()
    body = getattr(model, "model", None)
    if body is None:
        raise TypeError(f"{type(model).__name__} has no .model body to take hidden states from")
    return body, head


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
    body, head = _decoder(model)
    hidden = body(**batch.inputs, use_cache=False).last_hidden_state  # [B, T, H]
    ids = batch.inputs["input_ids"]
    mask_full = batch.response_mask.bool()
    lengths = mask_full.sum(1)
    width = int(lengths.max().item()) if len(lengths) else 0
    # Position of the j-th response token of each row; its logits sit one position earlier.
    order = torch.arange(mask_full.shape[1], device=device).expand_as(mask_full)
    first = torch.where(mask_full, order, torch.full_like(order, mask_full.shape[1])).min(1).values
    offsets = torch.arange(width, device=device)
    positions = (first[:, None] + offsets[None, :]).clamp(max=mask_full.shape[1] - 1)
    mask = offsets[None, :] < lengths[:, None]
    targets = torch.gather(ids, 1, positions).masked_fill(~mask, 0)
    gathered = torch.gather(
        hidden, 1, (positions - 1).clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1])
    )
    out = logprobs_from_hidden(
        gathered,
        head.weight,
        targets,
        bias=getattr(head, "bias", None),
        temperature=temperature if temperature > 0 else 1.0,
        with_entropy=with_entropy,
    )
    logp = out.logp.masked_fill(~mask, 0.0)
    entropy = None if out.entropy is None else out.entropy.masked_fill(~mask, 0.0)
    return ResponseLogprobs(logp=logp, entropy=entropy, mask=mask)
