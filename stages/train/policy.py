"""The policy being trained: model, optimizer, optional KL reference, and their checkpoints.

accelerate does device placement, mixed precision and distribution: under ``accelerate launch``
every process holds the policy and trains on its own slice of every micro-batch (see
:mod:`stages.train.update`). This module builds the policy from the recipe, computes frozen
(no-gradient) log-probs shared across processes, and saves, restores and exports it.
"""

from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from stages.errors import MgpoError
from stages.models.loading import load_policy
from stages.train import batching
from stages.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from stages.train.config import TrainConfig
from stages.train.forward import response_logprobs


class Policy:
    """What the update needs across steps: the (wrapped) model, its optimizer and accelerator,
    the ``PolicyIO`` that encodes its inputs, and the count of optimizer steps taken."""

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator

        self.config = config
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
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optim = config.optim
        optimizer = torch.optim.AdamW(
            params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.module = self.accelerator.unwrap_model(self.model)
        self.opt_steps = 0

    # -- log-probs without gradient ---------------------------------------------------------------

    @property
    def temperature(self) -> float:
        """The sampling temperature the log-probs are taken at (greedy counts as 1)."""
        t = self.config.rollout.temperature
        return t if t > 0 else 1.0

    def frozen_logprobs(
        self,
        model: Any,
        rows: list[dict],
        responses: list[list[int]],
        group_ids: list[int],
        shared: bool = False,
    ) -> list[torch.Tensor]:
        """Per-sample log-probs under ``model`` without gradient: the policy before this step's
        first update (the old log-probs), or the reference policy for the KL term.

        Each process computes its share of the samples (whole groups with the shared-prefix
        forward, ``shared``; see :mod:`stages.train.batching`) in the same number of forwards
        (a process short of samples repeats one), and one all-reduce of a zero-filled table
        shares them: exact, since every entry has a single non-zero contribution.
        """
        acc = self.accelerator
        micro = batching.micro_batches(
            range(len(rows)),
            group_ids,
            self.config.optim.micro_batch,
            acc.num_processes,
            acc.process_index,
            grouped=shared,
        )
        width = max([len(r) for r in responses] + [1])
        table = torch.zeros(len(rows), width, device=acc.device)
        with torch.no_grad():
            for chunk in micro:
                indices = [0 if i is None else i for i in chunk]  # idle: a forward all the same
                result = response_logprobs(
                    model,
                    self.io,
                    [rows[i] for i in indices],
                    [responses[i] for i in indices],
                    temperature=self.temperature,
                    with_entropy=False,
                    shared_prefix=shared,
                )
                for k, i in enumerate(chunk):
                    if i is not None:
                        table[i, : len(responses[i])] = result.logp[k, : len(responses[i])].float()
        if acc.num_processes > 1:
            table = acc.reduce(table, reduction="sum")
        table = table.cpu()
        return [table[i, : len(responses[i])] for i in range(len(rows))]

    def sum_across_processes(self, values: list[float]) -> list[float]:
        """Element-wise sum of a small vector over all processes (float64, one all-reduce)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=acc.device)
        return acc.reduce(tensor, reduction="sum").tolist()

    def max_across_processes(self, values: list[float]) -> list[float]:
        """Element-wise maximum of a small vector over all processes."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return list(values)
        gathered = acc.gather(torch.tensor(values, dtype=torch.float64, device=acc.device))
        return gathered.reshape(acc.num_processes, -1).amax(0).tolist()

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self, run_dir: Path, step: int, trainer_state: dict[str, Any]) -> None:
        """Checkpoint ``step``: weights, optimizer moments, RNG and ``trainer_state`` (main
        process only)."""
        if not self.accelerator.is_main_process:
            return
        state = self.accelerator.get_state_dict(self.model)
        path = save_checkpoint(
            run_dir,
            step,
            state,
            self.optimizer,
            {**trainer_state, "opt_steps": self.opt_steps},
            self.config.trainer.keep_last,
        )
        self.module.config.save_pretrained(path)
        self.io.save_pretrained(path)

    def restore(self, run_dir: Path) -> dict[str, Any] | None:
        """Load the newest checkpoint of ``run_dir`` (weights, optimizer, RNG); return its
        trainer state, or None when the run has no checkpoint yet."""
        found = checkpoint_dirs(run_dir)
        if not found:
            return None
        weights, state = load_checkpoint(found[-1], self.optimizer)
        self.module.load_state_dict(weights, strict=False)
        self.opt_steps = int(state.get("opt_steps", 0))
        return state

    def export(self, folder: Path) -> None:
        """The policy as a plain model folder (``--model RUN/final`` loads it)."""
        if self.accelerator.is_main_process:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.module.save_pretrained(tmp, state_dict=self.accelerator.get_state_dict(self.model))
            self.io.save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
