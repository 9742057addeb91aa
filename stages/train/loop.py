"""``mgpo train``: the on-policy loop, read top to bottom.

Each step:
  1. take the next ``batch_prompts`` prompt ids (seeded order, resumable position);
  2. roll them out ``n`` times on the current policy (rollout stage) -> ``steps/step-K/rollouts``;
  3. score them (score stage) -> ``steps/step-K/scores``; DAPO / GPG may sample extra rounds;
  4. compute group advantages, and the old log-probs with the trainer's own model (before any
     update; the engine's log-probs stay in the shards and are reported as a mismatch metric);
  5. update the policy: ``epochs`` passes, ``mini_batches`` optimizer steps per pass,
     ``micro_batch`` sequences per forward/backward, gradient clipping, AdamW, lr schedule;
  6. hand the new weights to the live rollout engine, log metrics, validate, checkpoint.

accelerate does device placement, mixed precision and distribution: under
``accelerate launch`` every process reads the same shards (the main process writes them) and
trains on its own slice of every micro-batch; loss normalisers are global, so the result equals a
single-process run on the same batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from mgpo_cli.config import to_dict
from mgpo_cli.console import console
from mgpo_cli.errors import MgpoError
from mgpo_cli.shards import is_complete, open_shards
from stages.rollout import RolloutOptions, run_rollout
from stages.score.run import ScoreOptions, run_score, score_pool
from stages.score.runner import ScorePool
from stages.train import algos, loss_metrics
from stages.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from stages.train.config import TrainConfig
from stages.train.data_order import Position, take
from stages.train.forward import response_logprobs
from stages.train.live import LiveView
from stages.train.metrics_log import MetricsLog, step_metrics
from stages.train.samples import Group, StepBatch, advantages_for, read_groups


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) under the configured schedule."""
    optim, total = config.optim, config.trainer.steps
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(total - optim.warmup_steps, 1)
    factor = {
        "constant": 1.0,
        "linear": 1.0 - progress,
        "cosine": 0.5 * (1.0 + math.cos(math.pi * progress)),
    }[optim.schedule]
    return optim.lr * factor


def step_seed(seed: int, step: int, what: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{what}".encode()).digest()[:4], "little")


def loss_params(config: TrainConfig) -> dict[str, Any]:
    """The algorithm's options from the recipe (only those the algorithm accepts)."""
    algo = config.algo
    accepted = algos.options(algo.name)
    wanted: dict[str, Any] = {"alpha": algo.alpha, "beta": algo.beta, "kl_coef": algo.kl_coef}
    if algo.eps_low is not None:
        wanted["eps_low"] = algo.eps_low
    if algo.eps_high is not None:
        wanted["eps_high"] = algo.eps_high
    return {k: v for k, v in wanted.items() if k in accepted and not (k == "kl_coef" and not v)}


# ----------------------------------------------------------------------------- run directory


def check_run_dir(config: TrainConfig, *, resume: bool, overwrite: bool) -> Path:
    """Refuse to touch an existing run unless told how (read-only: safe on every process)."""
    run_dir = Path(config.run_dir)
    saved = run_dir / "config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text())
        if not overwrite and not resume:
            raise MgpoError(
                f"{run_dir}: a run already exists here (pass --resume to continue it or --overwrite to replace it)"
            )
        if resume and not overwrite and _comparable(previous) != _comparable(to_dict(config)):
            raise MgpoError(
                f"{run_dir}: --resume with a different config than the run was started with ({_first_difference(previous, to_dict(config))})"
            )
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise MgpoError(
            f"{run_dir}: exists, is not empty and is not an mgpo run (pass --overwrite)"
        )
    return run_dir


def write_run_dir(config: TrainConfig, *, overwrite: bool) -> None:
    """Start the run directory (main process only): replace it if asked, save the config."""
    run_dir = Path(config.run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.json"
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_dict(config), indent=2, default=str))
    tmp.replace(saved)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """What must match for a resume: everything but the step budget and logging cadence."""
    out = json.loads(json.dumps(config, default=str))
    for key in ("steps", "val_every", "save_every", "keep_last", "wandb"):
        out.get("trainer", {}).pop(key, None)
    return out


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    a, b = _comparable(a) if not prefix else a, _comparable(b) if not prefix else b
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            found = _first_difference(a[key], b[key], f"{prefix}{key}.")
            if found:
                return found
        elif a.get(key) != b.get(key):
            return f"{prefix}{key}: {a.get(key)!r} then, {b.get(key)!r} now"
    return ""


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """Holds what lives across steps: model, optimizer, engine, accelerator, data position."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        from accelerate import Accelerator

        from mgpo_cli.models import load_policy
        from stages.rollout.backends import make_engine
        from stages.rollout.engine_hf import HFEngine

        self.config = config
        self.run_dir = run_dir
        cuda = torch.cuda.is_available() and config.trainer.device != "cpu"
        if config.trainer.device == "cuda" and not torch.cuda.is_available():
            raise MgpoError("trainer.device cuda: no CUDA device is available")
        precision = config.trainer.mixed_precision
        if precision == "auto":
            precision = "bf16" if cuda else "no"
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=precision)
        if config.trainer.cpu_threads > 0:
            torch.set_num_threads(config.trainer.cpu_threads)
        torch.manual_seed(config.trainer.seed)
        random.seed(config.trainer.seed)
        dtype = config.model.dtype if config.model.dtype != "auto" else "float32"
        model, self.io = load_policy(
            config.model.name,
            dtype=dtype,
            device=self.accelerator.device,
            trust_remote_code=config.model.trust_remote_code,
        )
        if config.model.freeze_vision:
            for name, param in model.named_parameters():
                if ".visual." in f".{name}" or name.startswith("visual."):
                    param.requires_grad_(False)
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.reference = None
        if config.algo.kl_coef > 0:
            import copy

            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optim = config.optim
        optimizer = torch.optim.AdamW(
            params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.policy = self.accelerator.unwrap_model(self.model)
        rollout = config.rollout
        if rollout.backend == "hf":  # share the trained module: updates are visible at once
            self.engine = HFEngine(self.policy, self.io, micro_batch_size=rollout.micro_batch)
        else:
            self.engine = make_engine(rollout.backend, self._rollout_options("", "", 0, 0))
        self.prompt_ids = [
            r["id"] for r in open_shards(config.data.train, "prompts").iter_rows(columns=["id"])
        ]
        if not self.prompt_ids:
            raise MgpoError(f"{config.data.train}: no prompts to train on")
        self.position = Position()
        self.step = 0
        self.scorer: ScorePool | None = None  # scoring workers, started on first use
        self.opt_steps = 0

    # -- stages, called exactly as the CLI calls them -----------------------------------------

    def _rollout_options(
        self, prompts: str, out: str, seed: int, policy_step: int, ids=None, greedy=False
    ) -> RolloutOptions:
        r = self.config.rollout
        return RolloutOptions(
            prompts=prompts,
            model=self.config.model.name,
            backend=r.backend,
            n=1 if greedy else r.n,
            temperature=0.0 if greedy else r.temperature,
            top_p=1.0 if greedy else r.top_p,
            max_new_tokens=r.max_new_tokens,
            batch_prompts=max(len(ids or ()), 1) if ids else 256,
            micro_batch=r.micro_batch,
            seed=seed,
            policy_step=policy_step,
            prompt_ids=tuple(ids) if ids else None,
            out=out,
            dtype=self.config.model.dtype,
            gpu_memory_utilization=r.gpu_memory_utilization,
            tensor_parallel_size=r.tensor_parallel_size,
            max_model_len=r.max_prompt_tokens + r.max_new_tokens,
        )

    def _score_options(self, rollouts: str, prompts: str, out: str) -> ScoreOptions:
        s = self.config.score
        return ScoreOptions(
            rollouts=rollouts,
            prompts=prompts,
            reward=s.reward,
            workers=s.workers,
            timeout_s=s.timeout_s,
            format_weight=s.format_weight,
            out=out,
        )

    def rollout_and_score(
        self,
        step_dir: Path,
        name: str,
        prompts: str,
        ids: list[str] | None,
        seed: int,
        greedy: bool = False,
        limit: int | None = None,
    ) -> tuple[Path, Path, float]:
        """Rollout + score shards for one round (reused if a killed run already finished them)."""
        rollouts, scores = step_dir / f"{name}rollouts", step_dir / f"{name}scores"
        started = time.perf_counter()
        if self.accelerator.is_main_process:
            if not is_complete(rollouts):
                options = self._rollout_options(
                    prompts, str(rollouts), seed, self.step, ids, greedy
                )
                if limit is not None:
                    options = dataclasses.replace(options, limit=limit)
                run_rollout(options, engine=self.engine, quiet=True)
            rollout_time = time.perf_counter() - started
            if not is_complete(scores):
                options = self._score_options(str(rollouts), prompts, str(scores))
                if self.scorer is None:  # workers kept for the whole run
                    self.scorer = score_pool(options)
                run_score(options, quiet=True, pool=self.scorer)
        else:
            rollout_time = 0.0
        self.accelerator.wait_for_everyone()
        return rollouts, scores, rollout_time

    # -- one step -------------------------------------------------------------------------------

    def collect(self, step_dir: Path) -> tuple[StepBatch, dict[str, float]]:
        """Roll out and score this step's prompts; DAPO / GPG may add bounded extra rounds."""
        config = self.config
        dynamic = (
            config.algo.dynamic_sampling
            if config.algo.dynamic_sampling is not None
            else config.algo.name == "dapo"
        )
        threshold = config.algo.gpg_threshold if config.algo.name == "gpg" else 0.0
        batch, timings, rounds = StepBatch(), {"rollout_s": 0.0, "score_s": 0.0}, 0
        kept_all: list[Group] = []
        while True:
            ids, self.position = take(
                self.prompt_ids,
                self.position,
                config.rollout.batch_prompts,
                seed=config.trainer.seed,
                shuffle=config.data.shuffle,
            )
            started = time.perf_counter()
            prefix = "" if rounds == 0 else f"round{rounds}-"
            rollouts, scores, rollout_time = self.rollout_and_score(
                step_dir,
                prefix,
                config.data.train,
                ids,
                step_seed(config.trainer.seed, self.step, f"rollout{rounds}"),
            )
            timings["rollout_s"] += rollout_time
            timings["score_s"] += time.perf_counter() - started - rollout_time
            groups = read_groups(str(rollouts), str(scores))
            kept_all.extend(groups)
            if dynamic:
                batch.groups.extend(g for g in groups if not g.degenerate)
                full = len(batch.groups) >= config.rollout.batch_prompts
            else:
                batch.groups.extend(groups)
                valid = sum(not g.degenerate for g in batch.groups) / max(len(batch.groups), 1)
                full = valid >= threshold
            rounds += 1
            if full or rounds > config.rollout.max_resample_rounds:
                break
        if dynamic:
            batch.groups = batch.groups[: config.rollout.batch_prompts]
        elif threshold > 0:  # GPG: keep the valid groups of every round
            batch.groups = [g for g in batch.groups if not g.degenerate] or batch.groups
        timings["rollout_rounds"] = float(rounds)
        return batch, {**step_metrics(kept_all, batch), **timings}

    def frozen_logprobs(
        self, model: Any, rows: list[dict], responses: list[list[int]]
    ) -> list[torch.Tensor]:
        """Per-sample log-probs under ``model`` without gradient: the policy before this step's
        first update (the old log-probs), or the reference policy for the KL term.

        Each process computes every ``world``-th sample, in the same number of forwards (a
        process short of samples repeats one), and one all-reduce of a zero-filled table shares
        them: exact, since every entry has a single non-zero contribution.
        """
        acc = self.accelerator
        world, rank = acc.num_processes, acc.process_index
        mine = list(range(rank, len(rows), world))
        per_rank = -(-len(rows) // world)
        size = self.config.optim.micro_batch
        width = max([len(r) for r in responses] + [1])
        table = torch.zeros(len(rows), width, device=acc.device)
        with torch.no_grad():
            for start in range(0, per_rank, size):
                chunk = mine[start : start + size]
                indices = chunk or [0]  # an idle process still runs its share of forwards
                result = response_logprobs(
                    model,
                    self.io,
                    [rows[i] for i in indices],
                    [responses[i] for i in indices],
                    temperature=self._temperature(),
                    with_entropy=False,
                )
                for k, i in enumerate(chunk):
                    table[i, : len(responses[i])] = result.logp[k, : len(responses[i])].float()
        if world > 1:
            table = acc.reduce(table, reduction="sum")
        table = table.cpu()
        return [table[i, : len(responses[i])] for i in range(len(rows))]

    def _temperature(self) -> float:
        return self.config.rollout.temperature if self.config.rollout.temperature > 0 else 1.0

    def update(self, batch: StepBatch, *, frozen_old: bool | None = None) -> dict[str, float]:
        """All optimizer steps of this training step; returns averaged loss metrics.

        ``frozen_old`` forces (True) or skips (False) the separate no-grad forward for the old
        log-probs; by default it runs only when the step makes more than one optimizer step.
        """
        config = self.config
        prompt_ids, responses, engine_logprobs, rewards, group_ids = batch.flat()
        rows = self._prompt_rows(set(prompt_ids))
        sample_rows = [rows[p] for p in prompt_ids]
        estimator = algos.ADVANTAGE_ESTIMATOR[config.algo.name]
        if estimator == "group_norm" and not config.algo.std_normalise:
            estimator = "mean_only"
        advantages = advantages_for(estimator, rewards, group_ids)
        params = loss_params(config)
        if config.algo.name == "gpg":
            from stages.train.advantages import gpg_correction

            params["alpha_age"] = gpg_correction(rewards, group_ids).alpha_age
        timings: dict[str, float] = {}
        started = time.perf_counter()
        # One optimizer step per rollout batch: the update's own forward runs on the policy that
        # sampled, so its detached log-probs are the old log-probs exactly (ratio 1) and a
        # separate no-grad forward would only cost time. More steps need them frozen up front.
        if frozen_old is None:
            frozen_old = config.optim.epochs * config.optim.mini_batches > 1
        old = self.frozen_logprobs(self.model, sample_rows, responses) if frozen_old else None
        self.fresh_logprobs: dict[int, torch.Tensor] = {}
        ref = (
            None
            if self.reference is None
            else self.frozen_logprobs(self.reference, sample_rows, responses)
        )
        timings["logprobs_s"] = time.perf_counter() - started
        started = time.perf_counter()
        order_rng = random.Random(step_seed(config.trainer.seed, self.step, "shuffle"))
        collected: list[dict[str, float]] = []  # per micro-batch; see loss_metrics
        grad_norms: list[float] = []
        count = len(responses)
        for _ in range(config.optim.epochs):
            order = list(range(count))
            order_rng.shuffle(order)
            minis = [
                order[i :: config.optim.mini_batches] for i in range(config.optim.mini_batches)
            ]
            for mini in minis:
                if not mini:
                    continue
                grad_norms.append(
                    self._optimizer_step(
                        mini, sample_rows, responses, old, ref, advantages, params, collected
                    )
                )
        timings["update_s"] = time.perf_counter() - started
        # Trainer vs engine log-probs. On-policy, each process holds the log-probs of the samples
        # it trained on; frozen, every process holds all of them.
        trainer_logprobs = dict(enumerate(old)) if old is not None else self.fresh_logprobs
        mismatch = [
            float((trainer_logprobs[i] - torch.tensor(engine_logprobs[i])).abs().mean())
            for i in sorted(trainer_logprobs)
            if len(engine_logprobs[i])
        ]
        # "loss": the mean whole-mini-batch loss (all micro-batches, all processes); 0 if none ran
        metrics = {"loss": 0.0, **self._step_loss_metrics(collected, len(grad_norms))}
        metrics["engine_logprob_mismatch"] = self._mean_over_samples(
            mismatch, across_processes=old is None
        )
        metrics.update(timings)
        metrics["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["processes"] = float(self.accelerator.num_processes)
        tokens = sum(len(r) for r in responses) * config.optim.epochs
        metrics["trainer_tokens_per_s"] = tokens / max(
            timings["update_s"] + timings["logprobs_s"], 1e-9
        )
        return metrics

    def _step_loss_metrics(self, chunks: list[dict[str, float]], steps: int) -> dict[str, float]:
        """The loss metrics of every micro-batch on every process, as one row (loss_metrics)."""
        keys, sums, extremes = loss_metrics.local_totals(chunks)
        acc = self.accelerator
        if acc.num_processes > 1 and keys:
            sums = self._sum_across_processes(sums)
            extremes = acc.gather(torch.tensor(extremes, dtype=torch.float64, device=acc.device))
            extremes = extremes.reshape(acc.num_processes, -1).amax(0).tolist()
        return loss_metrics.finish_totals(keys, sums, extremes, steps)

    def _mean_over_samples(self, values: list[float], *, across_processes: bool) -> float:
        """Mean of per-sample values held by this process, or by all processes together."""
        totals = [sum(values), float(len(values))]
        if across_processes and self.accelerator.num_processes > 1:
            totals = self._sum_across_processes(totals)
        return totals[0] / max(totals[1], 1.0)

    def _sum_across_processes(self, values: list[float]) -> list[float]:
        """Element-wise sum of a small vector over all processes (float64, one all-reduce)."""
        acc = self.accelerator
        tensor = torch.tensor(values, dtype=torch.float64, device=acc.device)
        return acc.reduce(tensor, reduction="sum").tolist()

    def _optimizer_step(
        self, mini, rows, responses, old, ref, advantages, params, collected
    ) -> float:
        """One optimizer step over mini-batch ``mini`` (sample indices).

        Every process takes ``mini[rank::world]`` and runs the same number of micro-batches
        (a process short of samples repeats one with its mask off, contributing nothing), so the
        gradient all-reduce lines up. Loss normalisers are the mini-batch's global counts, and
        DDP averages over processes, so each micro-batch loss is scaled by ``world``.
        """
        acc, config = self.accelerator, self.config
        world, rank = acc.num_processes, acc.process_index
        lengths = [len(responses[i]) for i in mini]
        normalisers = {
            "num_seqs": float(len(mini)),
            "num_tokens": float(max(sum(lengths), 1)),
            "max_len": float(max(max(lengths), 1)),
        }
        accepted = algos.options(config.algo.name)
        step_params = {**params, **{k: v for k, v in normalisers.items() if k in accepted}}
        per_rank = -(-len(mini) // world)
        local = mini[rank::world]
        padded = local + [None] * (per_rank - len(local))  # None: a masked-off placeholder
        micro = [
            padded[i : i + config.optim.micro_batch]
            for i in range(0, per_rank, config.optim.micro_batch)
        ]
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.opt_steps, config)
        for k, chunk in enumerate(micro):
            indices = [i if i is not None else mini[0] for i in chunk]
            live = torch.tensor([i is not None for i in chunk], device=acc.device)
            context = (
                acc.no_sync(self.model)
                if k < len(micro) - 1 and world > 1
                else contextlib.nullcontext()
            )
            with context, acc.autocast():
                result = response_logprobs(
                    self.model,
                    self.io,
                    [rows[i] for i in indices],
                    [responses[i] for i in indices],
                    temperature=self._temperature(),
                )
                width = result.logp.shape[1]
                device = result.logp.device
                extra = {}
                if ref is not None:
                    extra["ref_logp"] = _pad([ref[i] for i in indices], width).to(device)
                if old is None:  # on-policy: see ``update``
                    old_logp = result.logp.detach()
                    for k, i in enumerate(chunk):
                        if i is not None:
                            self.fresh_logprobs[i] = old_logp[k, : len(responses[i])].float().cpu()
                else:
                    old_logp = _pad([old[i] for i in indices], width).to(device)
                loss, metrics = algos.compute_loss(
                    config.algo.name,
                    result.logp,
                    old_logp,
                    advantages[indices].to(device),
                    result.mask & live[:, None],
                    entropy=result.entropy,
                    **step_params,
                    **extra,
                )
                acc.backward(loss * world)
            collected.append(metrics)  # a masked-off placeholder reports 0 tokens
        grad_norm = acc.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], config.optim.grad_clip
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.opt_steps += 1
        return float(grad_norm)

    def _prompt_rows(self, ids: set[str]) -> dict[str, dict]:
        from mgpo_cli.shards import prompt_row

        return {
            row["id"]: prompt_row(row)
            for row in open_shards(self.config.data.train, "prompts").iter_rows()
            if row["id"] in ids
        }

    def validate(self, step_dir: Path) -> dict[str, float]:
        config = self.config
        if not config.data.val:
            return {}
        _, scores, _ = self.rollout_and_score(
            step_dir, "val-", config.data.val, None, 0, greedy=True, limit=config.data.val_limit
        )
        rows = list(open_shards(scores, "scores").iter_rows())
        metrics = {"val_reward": sum(r["reward"] for r in rows) / max(len(rows), 1)}
        if rows and "accuracy" in rows[0]:
            metrics["val_accuracy"] = sum(r["accuracy"] for r in rows) / len(rows)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self) -> None:
        if not self.accelerator.is_main_process:
            return
        state = self.accelerator.get_state_dict(self.model)
        path = save_checkpoint(
            self.run_dir,
            self.step,
            state,
            self.optimizer,
            {"position": dataclasses.asdict(self.position), "opt_steps": self.opt_steps},
            self.config.trainer.keep_last,
        )
        self.policy.config.save_pretrained(path)
        self.io.save_pretrained(path)

    def restore(self) -> bool:
        found = checkpoint_dirs(self.run_dir)
        if not found:
            return False
        weights, state = load_checkpoint(found[-1], self.optimizer)
        self.policy.load_state_dict(weights, strict=False)
        self.step = int(state["step"])
        self.opt_steps = int(state.get("opt_steps", 0))
        self.position = Position(**state["position"])
        return True

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None

    def export(self, folder: Path) -> None:
        """The final policy as a plain model folder (``--model RUN/final`` loads it)."""
        if self.accelerator.is_main_process:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.policy.save_pretrained(tmp, state_dict=self.accelerator.get_state_dict(self.model))
            self.io.save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)


def _pad(values: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(values), width)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
    return out


def run_train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train ``config.trainer.steps`` steps; returns the run directory."""
    if config.trainer.require_gpu and not torch.cuda.is_available():
        raise MgpoError(
            f"this recipe ({config.model.name}, {config.rollout.batch_prompts} prompts x {config.rollout.n} samples) "
            "needs a GPU and none is available; on a CPU use --recipe tiny"
        )
    open_shards(config.data.train, "prompts")
    if config.data.val:
        open_shards(config.data.val, "prompts")
    from accelerate import PartialState

    run_dir = check_run_dir(config, resume=resume, overwrite=overwrite)
    state = PartialState(cpu=not (torch.cuda.is_available() and config.trainer.device != "cpu"))
    state.wait_for_everyone()
    if state.is_main_process:
        write_run_dir(config, overwrite=overwrite and not resume)
    state.wait_for_everyone()
    trainer = Trainer(config, run_dir)
    with contextlib.closing(trainer):  # stops the scoring workers, also on errors
        log = MetricsLog(
            run_dir,
            enabled=trainer.accelerator.is_main_process,
            wandb=config.trainer.wandb,
            config=to_dict(config),
        )
        if resume and trainer.restore():
            console.print(f"resuming {run_dir} after step {trainer.step}")
            log.truncate_after(trainer.step)
            for stale in (run_dir / "steps").glob("step-*"):
                if (
                    int(stale.name.split("-")[1]) > trainer.step
                    and trainer.accelerator.is_main_process
                ):
                    shutil.rmtree(stale, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        if trainer.step == 0 and config.trainer.val_every and config.data.val:
            log.write(0, {"step": 0, **trainer.validate(run_dir / "steps" / "step-000000")})
        with LiveView(
            config.trainer.steps, start=trainer.step, enabled=trainer.accelerator.is_main_process
        ) as live:
            while trainer.step < config.trainer.steps:
                started = time.perf_counter()
                step_dir = run_dir / "steps" / f"step-{trainer.step + 1:06d}"
                batch, metrics = trainer.collect(step_dir)
                metrics.update(trainer.update(batch))
                trainer.step += 1
                if config.rollout.backend != "hf":
                    trainer.engine.update_weights(trainer.policy.named_parameters())
                if config.trainer.val_every and trainer.step % config.trainer.val_every == 0:
                    metrics.update(trainer.validate(step_dir))
                metrics["step_time_s"] = time.perf_counter() - started
                metrics["step"] = trainer.step
                log.write(trainer.step, metrics)
                live.update(trainer.step, metrics)
                last = trainer.step == config.trainer.steps
                if last or (
                    config.trainer.save_every and trainer.step % config.trainer.save_every == 0
                ):
                    trainer.save()
                trainer.accelerator.wait_for_everyone()
        trainer.export(run_dir / "final")
        log.close()
        return run_dir
