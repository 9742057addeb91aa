"""The ``hf`` rollout backend: batched ``transformers`` ``generate`` on any device.

Sampling is done by our own logits processor, the only one in the list (the model's
``generation_config`` is set aside while we generate, so a checkpoint's repetition penalty or top-k
cannot creep in). Per step it

1. records ``log_softmax(logits / T)`` of the full vocabulary (``T = 1`` when greedy), and reads
   off the entry of the token sampled from it at the next step: these are the behaviour log-probs,
   the same quantity a teacher-forced forward gives the trainer (tested to 1e-4);
2. returns the distribution actually sampled: ``logits / T``, vision/image special tokens and ids
   the tokenizer does not have set to -inf, then the top-p nucleus when ``top_p < 1``.

With banned tokens or ``top_p < 1`` the sampled distribution is the policy's renormalised over the
allowed tokens, so the reported policy log-prob of a sampled token is a little lower than its
log-prob under the sampling distribution. ``logprobs="sampled"`` reports the latter instead
(what vLLM calls processed log-probs); the default ``"policy"`` is what importance ratios need.

Seeds: micro-batch ``k`` samples under ``torch.manual_seed`` of a seed derived from
``(seed, k)`` inside a forked RNG, so results repeat for the same seed, rows, ``n`` and
``micro_batch_size`` (a different micro-batch size gives different, equally valid samples) and
the caller's global RNG is untouched.

Shared prompts (``share_prompts=True``, the default): the rows of a micro-batch that repeat one
prompt (its ``n`` samples) are prefilled once. One forward over the distinct prompts, all but
their last token, fills a KV cache (the images go through the vision tower there, once per
prompt); the cache rows are then repeated for the samples and ``generate`` continues from it with
every sample's full prompt, exactly as a cache-continuation call. Positions are those ``generate``
gives the whole prompt (Qwen-VL: its 3-D M-RoPE positions and per-row offsets), so samples and
log-probs are today's for the same seed, up to float rounding (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from stages.errors import MgpoError
from stages.models.policy_io import PolicyIO
from stages.rollout.engine_api import Sample, check_logprob_mode, check_sampling, finish_sample


def nucleus_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``.

    Tokens outside it get -inf; the most likely token always stays. Ties at the edge are kept in
    sort order, as in the usual top-p.
    """
    if top_p >= 1.0:
        return scores
    ordered, index = torch.sort(scores, dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked before this one
    drop = before >= top_p
    drop[..., 0] = False
    mask = torch.zeros_like(drop).scatter(-1, index, drop)
    return scores.masked_fill(mask, float("-inf"))


class _Sampler:
    """Logits processor: shapes the sampling distribution and records the behaviour log-probs."""

    def __init__(self, temperature: float, top_p: float, banned: torch.Tensor, mode: str):
        self.temperature = temperature
        self.top_p = top_p
        self.banned = banned
        self.mode = mode
        self.pending: torch.Tensor | None = None
        self.taken: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:  # the token sampled at the previous step is now known
            self.taken.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
        scaled = logits.float()
        if self.temperature > 0:
            scaled = scaled / self.temperature
        policy = torch.log_softmax(scaled, dim=-1)
        shaped = scaled.index_fill(1, self.banned.to(scaled.device), float("-inf"))
        if self.temperature > 0:
            shaped = nucleus_filter(shaped, self.top_p)
        self.pending = policy if self.mode == "policy" else torch.log_softmax(shaped, dim=-1)
        return shaped

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """All recorded log-probs, ``(rows, steps)``, given the tokens of the final step."""
        if self.pending is not None:
            self.taken.append(self.pending.gather(1, last_tokens.unsqueeze(1)).squeeze(1))
            self.pending = None
        return torch.stack(self.taken, dim=1) if self.taken else torch.zeros(len(last_tokens), 0)


_IMAGE_INPUTS = ("pixel_values", "image_grid_thw")


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def _generation_mode(model: Any) -> Iterator[None]:
    """Eval mode, a blank generation config, no grad; all restored afterwards."""
    from transformers import GenerationConfig

    was_training = model.training
    saved = model.generation_config
    model.eval()
    model.generation_config = GenerationConfig()
    try:
        with torch.no_grad():
            yield
    finally:
        model.generation_config = saved
        model.train(was_training)
        inner = getattr(model, "model", None)
        if inner is not None and hasattr(inner, "rope_deltas"):
            inner.rope_deltas = None  # generate's cached M-RoPE offsets must not reach training


class HFEngine:
    """Rollouts with ``model.generate``. Keep one alive across training steps.

    The engine holds a reference to ``model``: if the trainer updates that same object in place
    (one process, CPU or one GPU) nothing needs handing over; otherwise call ``update_weights``
    or ``load_state_dict`` with the trainer's tensors.
    """

    def __init__(
        self,
        model: Any,
        io: PolicyIO,
        *,
        micro_batch_size: int = 8,
        logprobs: str = "policy",
        share_prompts: bool = True,
    ):
        check_logprob_mode(logprobs)
        if micro_batch_size < 1:
            raise MgpoError(f"micro_batch_size must be at least 1 (got {micro_batch_size})")
        self.model = model
        self.io = io
        self.micro_batch_size = micro_batch_size
        self.logprobs_mode = logprobs
        self.share_prompts = share_prompts
        self._banned = torch.tensor(io.banned_token_ids, dtype=torch.long)

    @classmethod
    def load(cls, model: str, *, dtype: str = "auto", device: str = "cpu", **options: Any):
        """An engine for a model spec (``tiny``, a folder, a hub id); see ``load_policy``."""
        from stages.models.loading import load_policy

        policy, io = load_policy(model, dtype=dtype, device=device)
        return cls(policy, io, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompt_rows: Sequence[Mapping[str, Any]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 512,
        seed: int = 0,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt row (row order kept); ``temperature == 0`` is greedy."""
        check_sampling(n, temperature, top_p, max_new_tokens)
        pairs = [p for p in range(len(prompt_rows)) for _ in range(n)]
        out: list[list[Sample]] = [[] for _ in prompt_rows]
        with _generation_mode(self.model):
            for k, start in enumerate(range(0, len(pairs), self.micro_batch_size)):
                chunk = pairs[start : start + self.micro_batch_size]
                samples = self._generate_batch(
                    [prompt_rows[p] for p in chunk],
                    chunk,
                    temperature,
                    top_p,
                    max_new_tokens,
                    _chunk_seed(seed, k),
                )
                for p, sample in zip(chunk, samples, strict=True):
                    out[p].append(sample)
        return out

    def _generate_batch(
        self,
        rows: Sequence[Mapping[str, Any]],
        prompts: Sequence[int],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[Sample]:
        """Samples for ``rows`` (``prompts[i]``: which prompt row ``i`` is, to share prefills)."""
        from transformers import GenerationConfig, LogitsProcessorList

        distinct = list(dict.fromkeys(prompts))
        shared = self.share_prompts and len(distinct) < len(prompts)
        first = [prompts.index(p) for p in distinct]
        batch = self.io.encode(
            [rows[i] for i in first] if shared else rows, padding_side="left"
        ).to(self.device)
        inputs: dict[str, Any] = batch.inputs
        if shared and inputs["input_ids"].shape[1] > 1:
            repeat = torch.tensor([distinct.index(p) for p in prompts], device=self.device)
            inputs = {
                "input_ids": inputs["input_ids"][repeat],
                "attention_mask": inputs["attention_mask"][repeat],
                "past_key_values": self._prefill(batch.inputs, repeat),
            }
        elif shared:  # one-token prompts: nothing to prefill; generate from the full rows
            batch = self.io.encode(rows, padding_side="left").to(self.device)
            inputs = batch.inputs
        sampler = _Sampler(temperature, top_p, self._banned, self.logprobs_mode)
        # Our sampler does temperature, top-p and banning: switch off every built-in warper.
        warpers = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}
        config = GenerationConfig(
            do_sample=temperature > 0,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.io.stop_token_ids,
            pad_token_id=self.io.pad_token_id,
            **warpers,
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            sequences = self.model.generate(
                **inputs,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        generated = sequences[:, inputs["input_ids"].shape[1] :].cpu()
        logprobs = sampler.finish(sequences[:, -1]).cpu()
        return [
            finish_sample(self.io, ids.tolist(), lps.tolist())
            for ids, lps in zip(generated, logprobs, strict=True)
        ]

    def _prefill(self, inputs: dict[str, torch.Tensor], repeat: torch.Tensor) -> Any:
        """KV cache of the distinct left-padded prompts but their last token, its rows repeated
        as ``repeat`` says; for Qwen-VL also the M-RoPE offsets ``generate`` continues from.

        The positions are those ``generate`` would give the whole prompts: the model's own 3-D
        positions with images, else ``cumsum(mask) - 1`` (padding at 0)."""
        from transformers import DynamicCache

        head = {k: v[:, :-1] for k, v in inputs.items() if k not in _IMAGE_INPUTS}
        inner = getattr(self.model, "model", None)
        rope = inner is not None and hasattr(inner, "rope_deltas")
        if "image_grid_thw" in inputs:
            head.update({k: v for k, v in inputs.items() if k in _IMAGE_INPUTS})
            inner.rope_deltas = None  # recomputed from this prompt batch
        else:
            mask = head["attention_mask"]
            head["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.model.config)
        self.model(**head, past_key_values=cache, use_cache=True, logits_to_keep=1)
        if rope:
            deltas = inner.rope_deltas if "image_grid_thw" in inputs else None
            if deltas is None:
                deltas = torch.zeros(
                    len(head["input_ids"]), 1, dtype=torch.long, device=self.device
                )
            inner.rope_deltas = deltas[repeat]
        cache.batch_select_indices(repeat)
        return cache

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors into the model's parameters/buffers by name (tied names included)."""
        state = self.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"update_weights: the model has no parameter named {name!r}")
                state[name].copy_(tensor.to(state[name].device, state[name].dtype))

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """A full state dict from the trainer (same names as ``model.state_dict()``)."""
        self.model.load_state_dict(state, strict=strict)
