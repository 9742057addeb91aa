"""The update: every optimizer step of one training step, on every process, with exact metrics.

``optim.epochs`` passes over the step's samples, each split into ``optim.mini_batches`` optimizer
steps of ``optim.micro_batch`` sequences per forward/backward. With a single optimizer step per
rollout batch the update's own forward runs on the policy that sampled, so its detached log-probs
are the old log-probs exactly (ratio 1); more steps need them frozen up front
(:meth:`Policy.frozen_logprobs`). With ``algo.entropy_top`` that frozen pass always runs: it
also gives the token entropies the step's high-entropy threshold is taken over
(:mod:`stages.train.loss_inputs`).

Mini-batches are sets of whole groups; how a mini-batch is cut into micro-batches and spread
over the processes (:mod:`stages.train.batching`) follows ``trainer.shared_prefix``: whole groups
per micro-batch for the shared-prefix forward, else ``mini[rank::world]``. Every process runs the
same number of micro-batches; loss normalisers are the mini-batch's global counts and DDP / FSDP
average gradients, so each micro-batch loss is scaled by ``world`` and K processes give the update
of one, whatever the cut.

Precision and memory: the model runs in train mode (so activation checkpointing recomputes) in
the compute dtype (:meth:`Policy.autocast`, or FSDP's mixed precision); the log-probs come out of
the chunked ``lm_head`` in float32 and the loss is computed outside autocast, in float32.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from stages.train import algos, batching, loss_metrics
from stages.train import shared_prefix as sp
from stages.train.forward import response_logprobs
from stages.train.loss_inputs import (
    StepTensors,
    loss_params,
    micro_tensors,
    normalisers,
    pad,
    step_tensors,
)
from stages.train.policy import Policy
from stages.train.samples import StepBatch, step_samples
from stages.train.schedule import lr_at, step_seed


def update(
    policy: Policy,
    batch: StepBatch,
    rows: dict[str, dict],
    step: int,
    *,
    frozen_old: bool | None = None,
) -> dict[str, float]:
    """All optimizer steps of training step ``step`` (0-based); returns the step's metrics.

    ``rows`` maps prompt id -> prompt row. ``frozen_old`` forces (True) or skips (False) the
    separate no-grad forward for the old log-probs; by default it runs only when the step makes
    more than one optimizer step.
    """
    config = policy.config
    samples = step_samples(config.algo, batch)  # advantages; MC-GRPO leaves medians out
    prompt_ids, responses, engine_logprobs = (
        samples.prompt_ids,
        samples.responses,
        samples.engine_logprobs,
    )
    sample_rows = [rows[p] for p in prompt_ids]
    params = loss_params(config)
    if config.algo.name == "gpg":
        from stages.train.advantages import gpg_correction

        params["alpha_age"] = gpg_correction(samples.rewards, samples.group_ids).alpha_age
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if frozen_old is None:
        frozen_old = config.optim.epochs * config.optim.mini_batches > 1
    group_ids = samples.group_ids
    pieces = batching.units(range(len(responses)), group_ids, config.optim.micro_batch)
    shared = sp.decide(
        config.trainer.shared_prefix, policy.module, policy.io, sample_rows, pieces, responses
    )
    frozen = (sample_rows, responses, group_ids, shared)
    entropy = None
    if config.algo.entropy_top is not None:  # the step's entropies, from the frozen forward
        old, entropy = policy.frozen_logprobs_and_entropy(policy.model, *frozen)
    else:
        old = policy.frozen_logprobs(policy.model, *frozen) if frozen_old else None
    fresh: dict[int, torch.Tensor] = {}  # on-policy: the update's own detached log-probs
    ref = policy.reference_logprobs(*frozen)
    tensors = step_tensors(config, engine_logprobs, responses, ref, entropy)
    timings["logprobs_s"] = time.perf_counter() - started
    started = time.perf_counter()
    order_rng = random.Random(step_seed(config.trainer.seed, step, "shuffle"))
    collected: list[dict[str, float]] = []  # per micro-batch; see loss_metrics
    grad_norms: list[float] = []
    inputs = _Inputs(
        sample_rows, responses, group_ids, shared, old, tensors, samples.advantages, params, fresh
    )
    with policy.training():
        for _ in range(config.optim.epochs):
            minis = batching.group_mini_batches(group_ids, config.optim.mini_batches, order_rng)
            for mini in minis:
                if mini:
                    grad_norms.append(_optimizer_step(policy, mini, inputs, collected))
    timings["update_s"] = time.perf_counter() - started
    # Trainer vs engine log-probs. On-policy, each process holds the log-probs of the samples
    # it trained on; frozen, every process holds all of them.
    trainer_logprobs = dict(enumerate(old)) if old is not None else fresh
    mismatch = [
        float((trainer_logprobs[i] - torch.tensor(engine_logprobs[i])).abs().mean())
        for i in sorted(trainer_logprobs)
        if len(engine_logprobs[i])
    ]
    # "loss": the mean whole-mini-batch loss (all micro-batches, all processes); 0 if none ran
    metrics = {"loss": 0.0, **_step_loss_metrics(policy, collected, len(grad_norms))}
    totals = [sum(mismatch), float(len(mismatch))]
    if old is None:
        totals = policy.dist.sum(totals)
    metrics["engine_logprob_mismatch"] = totals[0] / max(totals[1], 1.0)
    metrics.update(timings)
    metrics["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    metrics["lr"] = policy.optimizer.param_groups[0]["lr"]
    metrics["processes"] = float(policy.dist.world)
    metrics["shared_prefix"] = float(shared)  # 1: this step ran the shared-prefix forward
    if config.algo.baseline == "median":
        metrics["samples_left_out"] = float(samples.left_out)
    tokens = sum(len(r) for r in responses) * config.optim.epochs
    metrics["trainer_tokens_per_s"] = tokens / max(
        timings["update_s"] + timings["logprobs_s"], 1e-9
    )
    return metrics


@dataclass
class _Inputs:
    """The per-sample inputs every optimizer step of a training step reads."""

    rows: list[dict]  # prompt row of each sample (one object per prompt)
    responses: list[list[int]]
    group_ids: list[int]
    shared: bool  # the shared-prefix forward (whole groups per micro-batch) this step
    old: list[torch.Tensor] | None  # frozen old log-probs, or None: on-policy
    tensors: StepTensors  # reference / engine log-probs, the step's entropies (loss_inputs)
    advantages: torch.Tensor
    params: dict[str, Any]  # the loss's options
    fresh: dict[int, torch.Tensor]  # on-policy: filled with the update's own log-probs


def _step_loss_metrics(
    policy: Policy, chunks: list[dict[str, float]], steps: int
) -> dict[str, float]:
    """The loss metrics of every micro-batch on every process, as one row (loss_metrics)."""
    keys, sums, extremes = loss_metrics.local_totals(chunks)
    if keys:
        sums = policy.dist.sum(sums)
        extremes = policy.dist.max(extremes)
    return loss_metrics.finish_totals(keys, sums, extremes, steps)


def _optimizer_step(
    policy: Policy, mini: list[int], inputs: _Inputs, collected: list[dict[str, float]]
) -> float:
    """One optimizer step over mini-batch ``mini`` (sample indices); returns the grad norm.

    A process short of samples repeats one with its mask off (a ``None`` placeholder),
    contributing nothing, so the gradient all-reduce lines up.
    """
    config, device = policy.config, policy.dist.device
    world, rank = policy.dist.world, policy.dist.rank
    responses = inputs.responses
    step_params = {
        **inputs.params,
        **normalisers(config.algo.name, mini, responses, inputs.tensors),
    }
    micro = batching.micro_batches(
        mini, inputs.group_ids, config.optim.micro_batch, world, rank, grouped=inputs.shared
    )
    for group in policy.optimizer.param_groups:
        group["lr"] = lr_at(policy.opt_steps, config)
    for k, chunk in enumerate(micro):
        indices = [i if i is not None else mini[0] for i in chunk]
        live = torch.tensor([i is not None for i in chunk], device=device)
        with policy.accumulating(last=k == len(micro) - 1):
            with policy.autocast():  # the model only: log-probs and the loss stay float32
                result = response_logprobs(
                    policy.model,
                    policy.io,
                    [inputs.rows[i] for i in indices],
                    [responses[i] for i in indices],
                    device=device,
                    temperature=policy.temperature,
                    shared_prefix=inputs.shared,
                )
            width = result.logp.shape[1]
            extra = {"entropy": result.entropy}  # the step's entropies under the entropy mask
            extra.update(micro_tensors(inputs.tensors, indices, width, device))
            if inputs.old is None:  # on-policy: the update's own forward gives the old log-probs
                old_logp = result.logp.detach()
                for j, i in enumerate(chunk):
                    if i is not None:
                        inputs.fresh[i] = old_logp[j, : len(responses[i])].float().cpu()
            else:
                old_logp = pad([inputs.old[i] for i in indices], width).to(device)
            loss, metrics = algos.compute_loss(
                config.algo.name,
                result.logp,
                old_logp,
                inputs.advantages[indices].to(device),
                result.mask & live[:, None],
                **step_params,
                **extra,
            )
            (loss * world).backward()  # DDP and FSDP average gradients over the processes
        collected.append(metrics)  # a masked-off placeholder reports 0 tokens
    grad_norm = policy.clip_grad_norm()
    policy.optimizer.step()
    policy.optimizer.zero_grad(set_to_none=True)
    policy.opt_steps += 1
    return float(grad_norm)
