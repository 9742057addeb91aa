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

Processes: every process of a job runs its own engine. With a whole model each (DDP, one
process) they generate independently; with a sharded one (FSDP) every forward gathers each
layer's weights from all processes, so they must generate in lockstep: a ``Lockstep`` (the
trainer's, :mod:`stages.train.generation`) runs each micro-batch's forwards the sharding's way,
``generate`` with transformers' ``synced_gpus`` (a process that has finished keeps taking part in
forwards until all have), and a process with fewer micro-batches than another runs idle ones.

Seeds: each row of a micro-batch (a prompt's sample ``k``) draws its tokens from a generator of
its own, seeded from the call's seed, the prompt's id and ``k`` (``engine_api.prompt_seed``):
one uniform number per step picks the token by inverse CDF of the shaped distribution, and
``generate`` then takes that token greedily. Samples thus repeat for the same seed, prompt and
sample index whatever the micro-batch size, the other rows of the batch, or the number of
processes rolling out (up to float differences in the logits that batching makes), and the
caller's global RNG is never touched.

Shared prompts (``share_prompts=True``, the default): the rows of a micro-batch that repeat one
prompt (its ``n`` samples) are prefilled once. One forward over the distinct prompts, all but
their last token, fills a KV cache (the images go through the vision tower there, once per
prompt); the cache rows are then repeated for the samples and ``generate`` continues from it with
every sample's full prompt, exactly as a cache-continuation call. Positions are those ``generate``
gives the whole prompt (Qwen-VL: its 3-D M-RoPE positions and per-row offsets), so samples and
log-probs are the per-sample engine's for the same seed, up to float rounding (tested). In
lockstep every process must run the same forwards, so there every micro-batch (idle ones too) is
prefilled, repeated prompt or not, unless one process has a one-token prompt (then none is).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from stages.errors import MgpoError
from stages.models.policy_io import PolicyIO
from stages.rollout.engine_api import (
    Sample,
    check_logprob_mode,
    check_sampling,
    finish_sample,
    prompt_seed,
)


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


def draw(shaped: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row from ``softmax(shaped)``, by inverse CDF on one uniform number from each
    row's own generator (so a row's draws do not depend on the other rows)."""
    cdf = torch.cumsum(torch.softmax(shaped, dim=-1).double(), dim=-1)
    uniform = torch.stack([torch.rand((), dtype=torch.float64, generator=g) for g in generators])
    target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(1)  # < the total mass
    return torch.searchsorted(cdf, target, right=True).clamp(max=shaped.shape[-1] - 1)


class Lockstep(Protocol):
    """How the processes of a sharded model generate together (see the module docstring)."""

    def most(self, count: int) -> int:
        """The largest ``count`` over the processes (of micro-batches to generate)."""
        ...

    def generating(self) -> contextlib.AbstractContextManager:
        """Around a whole ``generate`` call of the engine (every process enters it)."""
        ...

    def run(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``call()`` (a micro-batch's prefill and ``generate``), its forwards run the
        sharding's way."""
        ...


IDLE_ROW = {"id": "idle", "prompt": "", "images": []}  # what a process without rows generates


class _Sampler:
    """Logits processor: shapes the sampling distribution, draws each row's token from it (with
    that row's generator), and records the behaviour log-probs."""

    def __init__(
        self,
        temperature: float,
        top_p: float,
        banned: torch.Tensor,
        mode: str,
        generators: Sequence[torch.Generator] = (),
    ):
        self.temperature = temperature
        self.top_p = top_p
        self.banned = banned
        self.mode = mode
        self.generators = generators
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
        if self.temperature == 0:
            return shaped  # greedy: generate takes the best allowed token
        chosen = draw(shaped, self.generators)
        return torch.full_like(shaped, float("-inf")).scatter_(1, chosen, 0.0)

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """All recorded log-probs, ``(rows, steps)``, given the tokens of the final step."""
        if self.pending is not None:
            self.taken.append(self.pending.gather(1, last_tokens.unsqueeze(1)).squeeze(1))
            self.pending = None
        return torch.stack(self.taken, dim=1) if self.taken else torch.zeros(len(last_tokens), 0)


_IMAGE_INPUTS = ("pixel_values", "image_grid_thw")


def sample_generator(prompt: int, sample: int) -> torch.Generator:
    """The random stream of sample ``sample`` of a prompt whose seed is ``prompt``."""
    state = np.random.SeedSequence([prompt, sample]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


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
        precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        lockstep: Lockstep | None = None,
        share_prompts: bool = True,
    ):
        """``precision``: the context the model computes in (the trainer's autocast);
        ``lockstep``: for a sharded model (see the module docstring)."""
        check_logprob_mode(logprobs)
        if micro_batch_size < 1:
            raise MgpoError(f"micro_batch_size must be at least 1 (got {micro_batch_size})")
        self.model = model
        self.io = io
        self.micro_batch_size = micro_batch_size
        self.logprobs_mode = logprobs
        self.precision = precision
        self.lockstep = lockstep
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
        seeds = [prompt_seed(seed, row, i) for i, row in enumerate(prompt_rows)]
        pairs = [(p, k) for p in range(len(prompt_rows)) for k in range(n)]
        size = self.micro_batch_size
        chunks = [pairs[start : start + size] for start in range(0, len(pairs), size)]
        together = self.lockstep
        count = together.most(len(chunks)) if together is not None else len(chunks)
        out: list[list[Sample]] = [[] for _ in prompt_rows]
        with (
            _generation_mode(self.model),
            self.precision(),
            together.generating() if together is not None else contextlib.nullcontext(),
        ):
            for index in range(count):
                if index >= len(chunks):  # idle: the others still generate (lockstep only)
                    idle = [torch.Generator()]
                    self._generate_batch([IDLE_ROW], [0], temperature, top_p, 1, idle)
                    continue
                chunk = chunks[index]
                rows = [prompt_rows[p] for p, _ in chunk]
                prompts = [p for p, _ in chunk]
                generators = [sample_generator(seeds[p], k) for p, k in chunk]
                samples = self._generate_batch(
                    rows, prompts, temperature, top_p, max_new_tokens, generators
                )
                for (p, _), sample in zip(chunk, samples, strict=True):
                    out[p].append(sample)
        return out

    def _generate_batch(
        self,
        rows: Sequence[Mapping[str, Any]],
        prompts: Sequence[int],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        generators: Sequence[torch.Generator],
    ) -> list[Sample]:
        """Samples for ``rows`` (``prompts[i]``: which prompt row ``i`` is, to share prefills)."""
        from transformers import GenerationConfig, LogitsProcessorList

        distinct = list(dict.fromkeys(prompts))
        together = self.lockstep
        share = self.share_prompts and (together is not None or len(distinct) < len(prompts))
        first = [prompts.index(p) for p in distinct]
        encoded = [rows[i] for i in first] if share else rows
        batch = self.io.encode(encoded, padding_side="left").to(self.device)
        if share and not self._everywhere(batch.inputs["input_ids"].shape[1] > 1):
            share = False  # a one-token prompt: nothing to prefill; generate from the full rows
            batch = self.io.encode(rows, padding_side="left").to(self.device)
        repeat = torch.tensor([distinct.index(p) for p in prompts], device=self.device)
        sampler = _Sampler(temperature, top_p, self._banned, self.logprobs_mode, generators)
        # Our sampler shapes the distribution and draws the token: generate only takes it.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.io.stop_token_ids,
            pad_token_id=self.io.pad_token_id,
        )
        arguments: dict[str, Any] = {
            "generation_config": config,
            "logits_processor": LogitsProcessorList([sampler]),
        }
        if together is not None:
            arguments["synced_gpus"] = True

        def run() -> torch.Tensor:
            inputs: dict[str, Any] = batch.inputs
            if share:
                inputs = {
                    "input_ids": inputs["input_ids"][repeat],
                    "attention_mask": inputs["attention_mask"][repeat],
                    "past_key_values": self._prefill(batch.inputs, repeat),
                }
            return self.model.generate(**inputs, **arguments)

        sequences = run() if together is None else together.run(run)
        generated = sequences[:, batch.inputs["input_ids"].shape[1] :].cpu()
        logprobs = sampler.finish(sequences[:, -1]).cpu()
        return [
            finish_sample(self.io, ids.tolist(), lps.tolist())
            for ids, lps in zip(generated, logprobs, strict=True)
        ]

    def _everywhere(self, condition: bool) -> bool:
        """``condition`` on this process and, in lockstep, on every process."""
        if self.lockstep is None:
            return condition
        return self.lockstep.most(0 if condition else 1) == 0

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

    def sleep(self) -> None:
        """Nothing to free: the engine generates with the trained model's own memory."""

    def wake(self) -> None:
        """Nothing to take back (see ``sleep``)."""

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """A full state dict from the trainer (same names as ``model.state_dict()``)."""
        self.model.load_state_dict(state, strict=strict)
