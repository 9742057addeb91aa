"""Teacher-forced log-probs of sampled responses under the policy being trained.

The prompt and response are encoded exactly as the rollout engine encoded them (one ``PolicyIO``,
left padding, so every response ends in the last column). Every trainer forward (the update, the
frozen old and reference log-probs) goes through :class:`LogprobModel`, whose ``forward`` runs the
model's backbone to its last hidden states and then the chunked ``lm_head`` of
:func:`stages.train.logprobs.logprobs_from_hidden`: only one ``[chunk, vocab]`` block of logits
exists at a time, in forward and in backward, and no ``[B, W, V]`` logits exist at all.

Why a module of its own rather than a function around ``model(...)``: the ``lm_head`` weight must
be used *inside* a forward that the DDP / FSDP wrapper sees. Under FSDP2 the weight is a shard
outside the root module's forward; FSDP gathers it in the root's pre-forward hook and, in backward,
reduce-scatters its gradient once the root's backward hooks fire. ``LogprobModel`` is that root
(``fully_shard`` is applied to it last), so the chunked head runs on the gathered weight and its
gradient is reduced like every other root parameter; under DDP the same forward is what
DistributedDataParallel's hooks watch.

A vision-language micro-batch without images still runs the vision tower once, on one blank
``merge x merge`` patch grid whose output enters the input embeddings multiplied by zero. Every
process therefore runs the same modules in the same order in forward and backward whatever its
rows hold: DDP sees every parameter used (no "parameters that were not used" error) and FSDP's
gathers and reduce-scatters line up across processes. The extra cost is one 4-patch vision pass.

Results are returned left-aligned: column ``j`` is the ``j``-th response token, as in the rollout
shards.

With ``shared_prefix`` the samples that share a prompt row go through one packed row instead
(:mod:`stages.train.shared_prefix`): same log-probs, entropies and gradients, the prompt and its
images encoded once. It is the same ``LogprobModel`` forward (so DDP, FSDP, checkpointing and the
chunked head work unchanged), given the packed inputs and, per response token, the position of
the hidden state that predicts it. Whether a step packs is decided once per step
(:func:`~stages.train.shared_prefix.decide`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from stages.errors import MgpoError
from stages.models.logprobs import forward_inputs
from stages.models.policy_io import PolicyIO
from stages.train import shared_prefix as sp
from stages.train.logprobs import logprobs_from_hidden


@dataclass
class ResponseLogprobs:
    logp: Tensor  # [B, R] log-prob of each response token (0 on padding)
    entropy: Tensor | None  # [B, R]
    mask: Tensor  # [B, R] bool, True on response tokens


class Generate:
    """A call for :meth:`LogprobModel.forward` to make (the engine's prefill and ``generate`` of
    one micro-batch), and the context to run it in: one object, so FSDP's forward hooks pass it
    through untouched. See :mod:`stages.train.generation`."""

    def __init__(
        self,
        call: Callable[[], Any],
        within: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.call = call
        self.within = within


class LogprobModel(nn.Module):
    """A causal LM (or image-text model) as the trainer calls it: inputs and the response tokens
    in, the response tokens' log-probs (and entropies) out, computed in float32 from hidden states
    in ``compute_dtype``."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype
        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise MgpoError(f"{type(model).__name__}: its output head is not a linear layer")
        text = model.config.get_text_config()
        for key in ("final_logit_softcapping", "logit_scale"):
            if getattr(text, key, None) not in (None, 1.0):
                raise MgpoError(f"{type(model).__name__} scales its logits ({key}): not supported")
        self.vision = getattr(model.config, "vision_config", None)

    def forward(
        self,
        inputs: dict[str, Tensor] | Generate,
        targets: Tensor | None = None,
        temperature: float = 1.0,
        with_entropy: bool = True,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None] | Any:
        """Log-probs of ``targets``: ``[B, W]``, the last ``W`` input ids (right-aligned); or, with
        ``positions`` (same shape as ``targets``, packed rows), each target predicted by the hidden
        state at that flat index into the ``[rows * length]`` positions. Given a
        :class:`Generate`, what its call returns (``generate``'s sequences), run inside this
        forward (what FSDP needs of a sharded model: :mod:`stages.train.generation`)."""
        if isinstance(inputs, Generate):
            with inputs.within():
                return inputs.call()
        assert targets is not None
        width = targets.shape[1]
        base = self.model.base_model
        if self.vision is not None and "pixel_values" not in inputs:
            inputs = dict(inputs)
            embeds = base.get_input_embeddings()(inputs.pop("input_ids"))
            inputs["inputs_embeds"] = embeds + self._blank_image().to(embeds.dtype)
        hidden = base(**inputs, use_cache=False).last_hidden_state
        if positions is None:
            hidden = hidden[:, -(width + 1) : -1]
        else:
            hidden = hidden.reshape(-1, hidden.shape[-1])[positions]
        head = self.model.get_output_embeddings()
        dtype = self.compute_dtype
        bias = None if head.bias is None else head.bias.to(dtype)
        result = logprobs_from_hidden(
            hidden.to(dtype),
            head.weight.to(dtype),
            targets,
            bias=bias,
            temperature=temperature,
            with_entropy=with_entropy,
        )
        # copies, not views: FSDP hooks the outputs for backward, and a view could lose that
        entropy = None if result.entropy is None else result.entropy.clone()
        return result.logp.clone(), entropy

    def _blank_image(self) -> Tensor:
        """Zero times the vision tower's output on a blank minimal image (see the module doc)."""
        vision = self.vision
        merge = vision.spatial_merge_size
        channels = getattr(vision, "in_channels", None) or vision.in_chans
        size = channels * vision.temporal_patch_size * vision.patch_size**2
        device = self.model.get_input_embeddings().weight.device
        grid = torch.tensor([[1, merge, merge]], device=device)
        pixels = torch.zeros(merge * merge, size, device=device)
        out = self.model.base_model.get_image_features(pixels, grid, return_dict=True)
        return torch.cat(list(out.pooler_output)).sum() * 0.0


def response_logprobs(
    model: nn.Module,
    io: PolicyIO,
    rows: Sequence[Mapping[str, Any]],
    responses: Sequence[Sequence[int]],
    *,
    device: torch.device,
    temperature: float = 1.0,
    with_entropy: bool = True,
    shared_prefix: bool = False,
) -> ResponseLogprobs:
    """Log-probs (at ``temperature``) of ``responses[i]`` following prompt ``rows[i]``;
    ``model`` is a :class:`LogprobModel` (or a DDP / FSDP wrapper of one). ``shared_prefix``
    packs the samples whose row is the same object into one row."""
    temperature = temperature if temperature > 0 else 1.0
    if shared_prefix:
        return _packed_logprobs(model, io, rows, responses, device, temperature, with_entropy)
    batch = io.encode(rows, responses, padding_side="left").to(device)
    lengths = batch.response_mask.sum(1)
    width = max(int(lengths.max().item()), 1)
    targets = batch.inputs["input_ids"][:, -width:]
    logp, entropy = model(
        forward_inputs(batch), targets, temperature=temperature, with_entropy=with_entropy
    )
    # Right-aligned (row i's response fills its last len_i columns) -> left-aligned.
    columns = torch.arange(width, device=device)
    mask = columns[None, :] < lengths[:, None]
    source = ((width - lengths)[:, None] + columns[None, :]).clamp(max=width - 1)
    logp = torch.gather(logp, 1, source).masked_fill(~mask, 0.0)
    if entropy is not None:
        entropy = torch.gather(entropy, 1, source).masked_fill(~mask, 0.0)
    return ResponseLogprobs(logp=logp, entropy=entropy, mask=mask)


def _packed_logprobs(
    model: nn.Module,
    io: PolicyIO,
    rows: Sequence[Mapping[str, Any]],
    responses: Sequence[Sequence[int]],
    device: torch.device,
    temperature: float,
    with_entropy: bool,
) -> ResponseLogprobs:
    """The shared-prefix forward: packed rows through the same ``LogprobModel``."""
    causal_lm = getattr(model, "module", model).model  # under DDP, the module it wraps
    packed = sp.pack(
        io,
        rows,
        responses,
        rope_index=getattr(causal_lm.base_model, "get_rope_index", None),
        attention=sp.attention_implementation(causal_lm),
    )
    inputs = {k: v.to(device) for k, v in packed.inputs.items()}
    logp, entropy = model(
        inputs,
        packed.targets.to(device),
        temperature=temperature,
        with_entropy=with_entropy,
        positions=packed.index.to(device),
    )
    mask = packed.mask.to(device)
    entropy = None if entropy is None else entropy.masked_fill(~mask, 0.0)
    return ResponseLogprobs(logp.masked_fill(~mask, 0.0), entropy, mask)
