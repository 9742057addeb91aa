"""``mgpo train``: the on-policy loop, read top to bottom.

Each step:
  1. take the next ``batch_prompts`` prompt ids (seeded order, resumable position);
  2. roll them out ``n`` times on the current policy (rollout stage) -> ``steps/step-K/rollouts``;
  3. score them (score stage) -> ``steps/step-K/scores``; DAPO / GPG may sample extra rounds;
  4. update the policy (:mod:`stages.train.update`): group advantages, old log-probs, optimizer
     steps;
  5. hand the new weights to the live rollout engine, log metrics, validate, checkpoint.

The policy side (model, optimizer, checkpoints) is :class:`~stages.train.policy.Policy`; this
module orchestrates the stages around it. Under ``accelerate launch`` or ``torchrun`` every
process is a full worker: it rolls out and scores its own slice of the step's prompts (and of the
validation prompts) with its own engine, writing its parts of the step's shard sets (the main
process seals them); then every process reads the whole step and trains on its own slice of every
micro-batch.

The rollout engine: the hf engine generates with the trained module itself (under FSDP all
processes generate in lockstep, :mod:`stages.train.generation`); a vllm engine lives in each
training process on its device, is handed the trainer's weights at start, sleeps during the
update and is handed the new weights in memory after it (and after a resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path

import torch

from stages.config import to_dict
from stages.console import console
from stages.errors import MgpoError
from stages.rollout import RolloutOptions, make_engine, run_rollout
from stages.score import ScoreOptions, ScorePool, run_score, score_pool
from stages.shards import is_complete, open_shards, prompt_row
from stages.train import dist
from stages.train.config import TrainConfig
from stages.train.data_order import Position, take
from stages.train.live import LiveView
from stages.train.metrics_log import MetricsLog, step_metrics
from stages.train.overlong import fitting_ids, write_report
from stages.train.plan_fit import check_fits, engine_share
from stages.train.policy import Policy
from stages.train.run_dir import check_run_dir, write_run_dir
from stages.train.samples import Group, StepBatch, read_groups
from stages.train.schedule import step_seed
from stages.train.update import update


class Trainer:
    """Holds what lives across steps: the policy, the rollout engine, the data position."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.policy = Policy(config)
        rollout = config.rollout
        if rollout.backend == "hf":  # the trained module itself (see Policy.hf_engine)
            self.engine = self.policy.hf_engine(rollout.micro_batch)
        else:  # one engine per process, in this process
            options = dataclasses.replace(
                self._rollout_options("", "", 0, 0),
                colocate=True,
                gpu_memory_utilization=engine_share(config),
            )
            self.engine = make_engine(rollout.backend, options)
            self.policy.sync_rollout(self.engine)  # the trainer's weights, as after every update
        # Prompts too long for rollout.max_prompt_tokens are dropped (or stop the run) now.
        limit, drop = rollout.max_prompt_tokens, config.data.filter_overlong
        self.prompt_ids, dropped = fitting_ids(self.policy.io, config.data.train, limit, drop)
        if not self.prompt_ids:
            raise MgpoError(f"{config.data.train}: no prompts to train on")
        self.val_ids, val_dropped = (
            fitting_ids(self.policy.io, config.data.val, limit, drop)
            if config.data.val
            else ([], [])
        )
        self.overlong = {"train": dropped, "val": val_dropped}
        self.position = Position()
        self.step = 0
        # Scoring workers start on first use; making the pool now checks the reward spec.
        self.scorer: ScorePool | None = score_pool(self._score_options("", "", ""))

    @property
    def is_main(self) -> bool:
        return self.policy.dist.is_main

    def wait_for_everyone(self) -> None:
        self.policy.dist.barrier()

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
        procs = self.policy.dist  # the job's processes: each takes its slice
        if not is_complete(rollouts):  # every process: its slice, its parts of the one set
            options = self._rollout_options(prompts, str(rollouts), seed, self.step, ids, greedy)
            total = len(ids) if ids else open_shards(prompts, "prompts").num_rows
            total = total if limit is None else min(total, limit)
            # One batch (one part) per process, so all generate at once.
            share = max(-(-total // procs.world), 1)
            options = dataclasses.replace(options, limit=limit, batch_prompts=share)
            run_rollout(options, engine=self.engine, quiet=True, processes=procs)
        rollout_time = time.perf_counter() - started
        if not is_complete(scores):  # every process scores the parts it rolled out
            options = self._score_options(str(rollouts), prompts, str(scores))
            if self.scorer is None:  # workers kept for the whole run
                self.scorer = score_pool(options)
            run_score(options, quiet=True, pool=self.scorer, processes=procs)
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

    def update(self, batch: StepBatch, *, frozen_old: bool | None = None) -> dict[str, float]:
        """All optimizer steps of this training step (see :func:`stages.train.update.update`)."""
        ids = {g.prompt_id for g in batch.groups}
        rows = {
            row["id"]: prompt_row(row)
            for row in open_shards(self.config.data.train, "prompts").iter_rows()
            if row["id"] in ids
        }
        return update(self.policy, batch, rows, self.step, frozen_old=frozen_old)

    def validate(self, step_dir: Path) -> dict[str, float]:
        config = self.config
        if not config.data.val:
            return {}
        ids, limit = None, config.data.val_limit
        if self.overlong["val"]:  # the first val_limit prompts that fit
            ids, limit = self.val_ids[: config.data.val_limit], None
        _, scores, _ = self.rollout_and_score(
            step_dir, "val-", config.data.val, ids, 0, greedy=True, limit=limit
        )
        rows = list(open_shards(scores, "scores").iter_rows())
        metrics = {"val_reward": sum(r["reward"] for r in rows) / max(len(rows), 1)}
        if rows and "accuracy" in rows[0]:
            metrics["val_accuracy"] = sum(r["accuracy"] for r in rows) / len(rows)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self) -> None:
        self.policy.save(self.run_dir, self.step, {"position": dataclasses.asdict(self.position)})

    def restore(self) -> bool:
        state = self.policy.restore(self.run_dir)
        if state is None:
            return False
        self.step = int(state["step"])
        self.position = Position(**state["position"])
        self.policy.sync_rollout(self.engine)  # samples from the checkpoint's weights from now
        return True

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None


def run_train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train ``config.trainer.steps`` steps; returns the run directory."""
    if config.trainer.require_gpu and not torch.cuda.is_available():
        raise MgpoError(
            f"this recipe ({config.model.name}, {config.rollout.batch_prompts} prompts x {config.rollout.n} samples) "
            "needs a GPU and none is available; on a CPU use --recipe tiny"
        )
    check_fits(config)  # before any weight is loaded or anything written
    open_shards(config.data.train, "prompts")
    if config.data.val:
        open_shards(config.data.val, "prompts")
    run_dir = check_run_dir(config, resume=resume, overwrite=overwrite)
    fresh = not (resume and (run_dir / "config.json").is_file())
    processes = dist.setup(config.trainer.device, config.trainer.collective_timeout_s)
    # shutdown: leaves the process group, also on errors
    with contextlib.ExitStack() as leave:
        leave.callback(dist.shutdown)
        # Everything that can be refused (model, data, reward) is, before the run folder is touched.
        trainer = Trainer(config, run_dir)
        processes.barrier()
        if processes.is_main:
            write_run_dir(config, overwrite=overwrite and not resume)
            if any(trainer.overlong.values()):
                write_report(run_dir, config.rollout.max_prompt_tokens, trainer.overlong)
                counts = ", ".join(f"{len(v)} {k}" for k, v in trainer.overlong.items() if v)
                console.print(
                    f"[yellow]dropped prompts longer than rollout.max_prompt_tokens"
                    f" ({config.rollout.max_prompt_tokens} tokens): {counts}; ids in"
                    f" {run_dir / 'overlong_prompts.json'}[/]"
                )
        processes.barrier()
        with contextlib.closing(trainer):  # stops the scoring workers, also on errors
            try:
                return _train(trainer, config, run_dir, resume)
            except MgpoError:
                # Bad input met in the first step of a new run: leave no run folder that a
                # rerun would have to be told to --overwrite.
                if fresh and trainer.step == 0 and trainer.is_main:
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise


def _train(trainer: Trainer, config: TrainConfig, run_dir: Path, resume: bool) -> Path:
    """The step loop of ``run_train``, from a fresh start or the last checkpoint."""
    log = MetricsLog(
        run_dir, enabled=trainer.is_main, wandb=config.trainer.wandb, config=to_dict(config)
    )
    if resume:
        restored = trainer.restore()
        if restored:
            console.print(f"resuming {run_dir} after step {trainer.step}")
        # Steps after the checkpoint (all of them without one) are redone: no duplicate rows.
        log.truncate_after(trainer.step if restored else -1)
        if trainer.is_main:
            for stale in (run_dir / "steps").glob("step-*"):
                if int(stale.name.split("-")[1]) > trainer.step:
                    shutil.rmtree(stale, ignore_errors=True)
    trainer.wait_for_everyone()
    if trainer.step == 0 and config.trainer.val_every and config.data.val:
        log.write(0, {"step": 0, **trainer.validate(run_dir / "steps" / "step-000000")})
    with LiveView(config.trainer.steps, start=trainer.step, enabled=trainer.is_main) as live:
        while trainer.step < config.trainer.steps:
            started = time.perf_counter()
            step_dir = run_dir / "steps" / f"step-{trainer.step + 1:06d}"
            batch, metrics = trainer.collect(step_dir)
            trainer.engine.sleep()  # vllm: its weights and KV cache freed for the update
            metrics.update(trainer.update(batch))
            trainer.step += 1
            synced = time.perf_counter()
            trainer.policy.sync_rollout(trainer.engine)  # and awake again
            metrics["weight_sync_s"] = time.perf_counter() - synced
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
            trainer.wait_for_everyone()
    trainer.policy.export(run_dir / "final")
    log.close()
    return run_dir
