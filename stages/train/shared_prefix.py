"""Shared-prefix forward: each prompt encoded once per group, every response attending to it.

In a group-relative step the ``n`` samples of a prompt share that prompt, and for a
vision-language model the prompt (hundreds to thousands of image tokens) is the long part. The
standard forward (:mod:`stages.train.forward`) encodes prompt + response once per sample; here
the samples of a micro-batch that share a prompt row become **one packed row**::

    [ prompt | response 1 | response 2 | ... | response k | padding ]

with a block attention mask: prompt tokens attend causally among themselves, each response
attends to the whole prompt and causally to itself, never to another response, and padding is
never attended to (a padding query sees the prompt and earlier padding, so no row of the mask is
empty and no NaN can reach a gradient). Position ids continue from the end of the prompt for
every response, exactly as the standard forward numbers prompt + response: text-only models get
``0 .. P-1`` for the prompt and ``P .. P+R-1`` for each response; Qwen2-VL-family models get the
prompt's 3-D rotary positions from the model's own ``get_rope_index`` (image tokens on the
temporal/height/width grid) and each response ``max + 1 + j`` on all three axes, which is what
``get_rope_index`` gives a response's text tokens in the standard forward. The images of the
prompt go through the vision tower once per packed row.

Every token of the packed row sees exactly the keys, positions and inputs it sees in the standard
forward, so log-probs, entropies and gradients are the standard forward's (tested to 1e-5 in
float32); prompt activations are computed once and their gradient accumulates the contributions
of all ``k`` responses. Why one packed row rather than the prompt's keys/values computed once and
reused: the packed row is one ordinary forward of the model, so DDP and FSDP hooks, activation
checkpointing, mixed precision and the vision tower all work unchanged, and there is one forward
and one backward per micro-batch. The price is a dense ``[L, L]`` mask per row, and the
attention kernel computing the masked-out response-to-response blocks; :func:`saves_work`
weighs that against the prompt tokens saved (``trainer.shared_prefix: auto``).

Attention implementations: ``sdpa`` (a boolean mask) and ``eager`` (an additive float mask).
Flash-attention kernels take no arbitrary mask, so those models use the standard forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stages.errors import MgpoError
from stages.models.policy_io import PolicyIO
from stages.models.prompt_length import prompt_lengths
from stages.train import batching

SUPPORTED_ATTENTION = ("sdpa", "eager")
MODES = ("auto", "on", "off")


@dataclass
class Packed:
    """Model inputs for one packed row per prompt, and where each response token is predicted."""

    inputs: dict[str, Tensor]  # input_ids [U, L], 4-D attention_mask, position_ids, images
    index: Tensor  # [S, W] flat index into the [U * L] positions: the one predicting token j
    targets: Tensor  # [S, W] response tokens, left-aligned (-100 on padding)
    mask: Tensor  # [S, W] bool, True on response tokens
    rows: int  # U, packed rows
    width: int  # L, tokens per packed row (padded)
    prompt_lengths: list[int]  # tokens of each packed row's prompt
    unit_lengths: list[list[int]]  # response lengths of each packed row


def units_of(rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Sample indices grouped by prompt row, in order of first appearance. Samples share a prompt
    when their row is the same object (the trainer passes one row object per prompt id)."""
    return batching.grouped(range(len(rows)), lambda i: id(rows[i]))


def attention_implementation(model: Any) -> str:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return str(getattr(text, "_attn_implementation", None) or config._attn_implementation)


def supported(model: Any) -> bool:
    """Whether ``model`` takes the packed row's 4-D mask (sdpa or eager attention)."""
    return attention_implementation(model) in SUPPORTED_ATTENTION


def check_supported(model: Any) -> None:
    name = attention_implementation(model)
    if name not in SUPPORTED_ATTENTION:
        raise MgpoError(
            f"trainer.shared_prefix on: attention '{name}' takes no block mask "
            f"(supported: {', '.join(SUPPORTED_ATTENTION)}); use trainer.shared_prefix: off or auto"
        )


def _prompt_positions(
    io: PolicyIO, enc: dict[str, Tensor], rope_index: Callable[..., Any] | None
) -> Tensor:
    """``[D, U, P]`` positions of the right-padded prompts: D = 3 (M-RoPE) with images, else 1."""
    mask = enc["attention_mask"]
    if "image_grid_thw" in enc:
        if rope_index is None:
            raise MgpoError(f"model {io.name}: images need the model's get_rope_index")
        positions, _ = rope_index(
            enc["input_ids"],
            mm_token_type_ids=enc["mm_token_type_ids"],
            image_grid_thw=enc["image_grid_thw"],
            attention_mask=mask,
        )
        return positions
    return ((mask.long().cumsum(-1) - 1).clamp(min=0))[None]


def block_mask(segments: Tensor, kind: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[U, 1, L, L]`` mask from segment ids (0 prompt, ``k`` the k-th response, -1 padding):
    causal, and a key outside the prompt only for queries of its own segment."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    keys, queries = segments[:, None, :], segments[:, :, None]
    allowed = causal[None] & ((keys == 0) | (keys == queries))
    allowed = allowed[:, None]
    if kind == "sdpa":
        return allowed
    if kind == "eager":
        out = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
        return out.masked_fill_(~allowed, torch.finfo(dtype).min)
    raise MgpoError(f"attention '{kind}' takes no block mask")


def pack(
    io: PolicyIO,
    rows: Sequence[Mapping[str, Any]],
    responses: Sequence[Sequence[int]],
    *,
    rope_index: Callable[..., Any] | None = None,
    attention: str = "sdpa",
    mask_dtype: torch.dtype = torch.float32,
) -> Packed:
    """Packed rows for samples ``(rows[i], responses[i])``: one row per distinct prompt row.

    ``rope_index`` is the model's ``get_rope_index`` (Qwen2-VL family; needed for images).
    Output ``index``/``targets``/``mask`` follow the sample order of ``rows``.
    """
    if len(rows) != len(responses):
        raise ValueError(f"{len(responses)} responses for {len(rows)} rows")
    units = units_of(rows)
    enc = io.encode([rows[u[0]] for u in units], padding_side="right").inputs
    prompt_pos = _prompt_positions(io, enc, rope_index)
    dims = prompt_pos.shape[0]
    lengths = [int(n) for n in enc["attention_mask"].sum(1).tolist()]
    packed_ids, packed_pos, packed_seg = [], [], []
    width = max([len(r) for r in responses] + [1])
    index = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for u, samples in enumerate(units):
        p = int(lengths[u])
        ids = [enc["input_ids"][u, :p]]
        pos = [prompt_pos[:, u, :p]]
        seg = [torch.zeros(p, dtype=torch.long)]
        start = int(pos[0].max()) + 1 if p else 0  # where every response's positions begin
        offset = p
        for k, s in enumerate(samples):
            response = torch.as_tensor(list(responses[s]), dtype=torch.long)
            r = len(response)
            ids.append(response)
            pos.append((start + torch.arange(r)).expand(dims, r))
            seg.append(torch.full((r,), k + 1, dtype=torch.long))
            if r:
                # token j is predicted at the position before it: the prompt's last for j = 0
                before = torch.cat([torch.tensor([p - 1]), offset + torch.arange(r - 1)])
                index[s, :r] = before
                targets[s, :r] = response
            offset += r
        packed_ids.append(torch.cat(ids))
        packed_pos.append(torch.cat(pos, dim=1))
        packed_seg.append(torch.cat(seg))
    length = max(len(x) for x in packed_ids)
    n_units = len(units)
    input_ids = torch.full((n_units, length), io.pad_token_id, dtype=torch.long)
    positions = torch.zeros(dims, n_units, length, dtype=torch.long)
    segments = torch.full((n_units, length), -1, dtype=torch.long)
    for u in range(n_units):
        size = len(packed_ids[u])
        input_ids[u, :size] = packed_ids[u]
        positions[:, u, :size] = packed_pos[u]
        segments[u, :size] = packed_seg[u]
    for u, samples in enumerate(units):
        for s in samples:
            index[s] += u * length
    inputs = {
        "input_ids": input_ids,
        "attention_mask": block_mask(segments, attention, mask_dtype),
        "position_ids": positions if dims == 3 else positions[0],
    }
    for key in ("pixel_values", "image_grid_thw"):
        if key in enc:
            inputs[key] = enc[key]
    mask = targets >= 0
    unit_lengths = [[len(responses[s]) for s in samples] for samples in units]
    return Packed(inputs, index, targets, mask, n_units, length, lengths, unit_lengths)


def forward_cost(tokens: int, pairs: int, hidden: int) -> float:
    """Relative cost of a forward: ~24 h^2 multiply-adds per token (projections and MLP) and
    ~4 h per attended (query, key) pair, per layer."""
    return tokens * 24.0 * hidden * hidden + pairs * 4.0 * hidden


def saves_work(
    prompt_lengths: Sequence[int], unit_lengths: Sequence[Sequence[int]], hidden: int
) -> bool:
    """Whether packed rows cost less than the standard forward: units ``u`` of samples with
    response lengths ``unit_lengths[u]`` after a prompt of ``prompt_lengths[u]`` tokens. The
    standard forward runs ``P + R`` tokens per sample with causal attention (half the square);
    a packed row runs ``P + sum(R)`` tokens with the dense masked square. The vision tower, which
    packing runs once per row instead of once per sample, is left out: it only adds savings."""
    standard = packed = 0.0
    for p, unit in zip(prompt_lengths, unit_lengths, strict=True):
        standard += sum(forward_cost(p + r, (p + r) ** 2 // 2, hidden) for r in unit)
        length = p + sum(unit)
        packed += forward_cost(length, length**2, hidden)
    return packed < standard


def decide(
    mode: str,
    model: Any,
    io: PolicyIO,
    rows: Sequence[Mapping[str, Any]],
    unit_samples: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
) -> bool:
    """``trainer.shared_prefix`` for one training step: ``on`` (refused where the attention takes
    no block mask), ``off``, or ``auto``: on where the model supports it and packing the step's
    units (sample indices sharing a prompt row) costs less than the standard forward. One
    decision per step, so every pass and micro-batch of the step runs the same forward."""
    if mode == "off":
        return False
    if mode == "on":
        check_supported(model)
        return True
    if not supported(model) or not unit_samples:
        return False
    firsts = [rows[unit[0]] for unit in unit_samples]
    distinct = {id(row): row for row in firsts}
    lengths = dict(zip(distinct, prompt_lengths(io, list(distinct.values())), strict=True))
    unit_lengths = [[len(responses[s]) for s in unit] for unit in unit_samples]
    hidden = model.config.get_text_config().hidden_size
    return saves_work([lengths[id(row)] for row in firsts], unit_lengths, hidden)
