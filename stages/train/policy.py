"""The policy being trained: model, optimizer, optional KL reference, and their checkpoints.

Precision: the master weights and AdamW's state are always float32; the recipe's ``model.dtype``
is the *compute* dtype (``auto``: bf16 on a GPU, float32 on a CPU). Under FSDP the shards are
gathered in the compute dtype (``MixedPrecisionPolicy``) and gradients reduced in float32; under
DDP (or one process) the forward runs under ``torch.autocast`` in the compute dtype. Log-probs,
ratios and losses are float32 either way. Stepping bf16 weights directly, as before, lost most
updates at the paper's learning rate: a 1e-6 step is below bf16's resolution at 0.02.

Processes (:mod:`stages.train.dist`) and their layout (:mod:`stages.train.sharding`): every
process trains on its own slice of every micro-batch (see :mod:`stages.train.update`). The
rollout engine on the main process gets its own unsharded copy of the policy in the compute
dtype when it cannot share the trained module (FSDP, or a compute dtype other than float32);
:meth:`Policy.sync_rollout` refreshes it after every update.
"""

from __future__ import annotations

import contextlib
import copy
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from stages.models.loading import load_policy
from stages.train import dist as distributed
from stages.train import sharding
from stages.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from stages.train.config import TrainConfig
from stages.train.forward import LogprobModel, response_logprobs

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}
DTYPES["bfloat16"] = torch.bfloat16


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The recipe's ``model.dtype`` as the compute dtype (``auto``: bf16 on GPUs only)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def freeze_vision(model: torch.nn.Module) -> None:
    for name, param in model.named_parameters():
        if ".visual." in f".{name}" or name.startswith("visual."):
            param.requires_grad_(False)


class Policy:
    """What the update needs across steps: the wrapped model (``model``, a
    :class:`~stages.train.forward.LogprobModel` under DDP or FSDP), the plain transformers model
    inside it (``module``), its optimizer, the ``PolicyIO`` that encodes its inputs, the
    processes (``dist``) and the count of optimizer steps taken."""

    def __init__(self, config: TrainConfig, loaded: tuple[Any, Any] | None = None) -> None:
        """``loaded``: an already built ``(model, io)`` (float32) instead of ``model.name``, e.g.
        a random-weight model of a published architecture (``benchmarks/gpu_check.py``)."""
        self.config = config
        trainer = config.trainer
        self.dist = distributed.setup(trainer.device, trainer.collective_timeout_s)
        self.dtype = compute_dtype(config.model.dtype, self.dist.device)
        self.fsdp = trainer.strategy == "fsdp"
        if trainer.cpu_threads > 0:
            torch.set_num_threads(trainer.cpu_threads)
        torch.manual_seed(trainer.seed)
        random.seed(trainer.seed)
        # FSDP loads on the CPU and moves one shard at a time to the device while sharding.
        model, self.io = loaded or load_policy(
            config.model.name,
            dtype="float32",
            device="cpu" if self.fsdp else self.dist.device,
            trust_remote_code=config.model.trust_remote_code,
        )
        if config.model.freeze_vision:
            freeze_vision(model)
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.module = model
        self.rollout_module = self._rollout_module()
        self.reference = None
        if config.algo.kl_coef > 0:  # copied before sharding (FSDP modules cannot be copied)
            ref = LogprobModel(copy.deepcopy(model).requires_grad_(False), self.dtype)
            self.reference = sharding.shard(ref, self.dist, self.dtype) if self.fsdp else ref
        self.model = self._wrap(LogprobModel(model, self.dtype))
        params = [p for p in model.parameters() if p.requires_grad]  # after sharding: DTensors
        optim = config.optim
        self.optimizer = torch.optim.AdamW(
            params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        self.opt_steps = 0

    def _wrap(self, root: LogprobModel) -> torch.nn.Module:
        if self.fsdp:
            return sharding.shard(root, self.dist, self.dtype)
        return sharding.replicate(root, self.dist)

    def _rollout_module(self) -> torch.nn.Module | None:
        """What the hf engine generates with: the trained module itself when it can share it
        (DDP / one process, float32 compute), else a copy in the compute dtype on the main
        process only (built before sharding); None where no engine runs."""
        if self.config.rollout.backend != "hf":
            return None
        if not self.fsdp and self.dtype == torch.float32:
            return self.module
        if not self.dist.is_main:
            return None
        return copy.deepcopy(self.module).to(self.dist.device, self.dtype).eval()

    # -- precision, modes, gradients --------------------------------------------------------------

    @property
    def temperature(self) -> float:
        """The sampling temperature the log-probs are taken at (greedy counts as 1)."""
        t = self.config.rollout.temperature
        return t if t > 0 else 1.0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Compute in the compute dtype where FSDP does not already (DDP, one process)."""
        if self.fsdp or self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.dtype)

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward/backward: DDP all-reduces on the last one only; FSDP
        reduce-scatters every micro-batch (keeping gradients sharded in between)."""
        if last or self.fsdp or self.dist.world == 1:
            return contextlib.nullcontext()
        return self.model.no_sync()

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Train mode for the update (activation checkpointing only runs in train mode; the
        supported models have no dropout), eval mode again afterwards."""
        self.module.train()
        try:
            yield
        finally:
            self.module.eval()

    def clip_grad_norm(self) -> float:
        """Clip the (possibly sharded) gradients to ``optim.grad_clip``; the norm before."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
        return float(norm.full_tensor() if sharding.is_sharded(norm) else norm)

    # -- log-probs without gradient ---------------------------------------------------------------

    def frozen_logprobs(
        self, model: Any, rows: list[dict], responses: list[list[int]]
    ) -> list[torch.Tensor]:
        """Per-sample log-probs under ``model`` without gradient: the policy before this step's
        first update (the old log-probs), or the reference policy for the KL term.

        Each process computes every ``world``-th sample, in the same number of forwards (a
        process short of samples repeats one), and one all-reduce of a zero-filled table shares
        them: exact, since every entry has a single non-zero contribution.
        """
        return self._frozen(model, rows, responses, with_entropy=False)[0]

    def frozen_logprobs_and_entropy(
        self, model: Any, rows: list[dict], responses: list[list[int]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`frozen_logprobs` plus each token's entropy from the same forward (what the
        high-entropy token mask's step-wide threshold is computed from)."""
        return self._frozen(model, rows, responses, with_entropy=True)

    def _frozen(
        self, model: Any, rows: list[dict], responses: list[list[int]], *, with_entropy: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        world, rank, device = self.dist.world, self.dist.rank, self.dist.device
        mine = list(range(rank, len(rows), world))
        per_rank = -(-len(rows) // world)
        size = self.config.optim.micro_batch
        width = max([len(r) for r in responses] + [1])
        table = torch.zeros(2 if with_entropy else 1, len(rows), width, device=device)
        with torch.no_grad():
            for start in range(0, per_rank, size):
                chunk = mine[start : start + size]
                indices = chunk or [0]  # an idle process still runs its share of forwards
                with self.autocast():
                    result = response_logprobs(
                        model,
                        self.io,
                        [rows[i] for i in indices],
                        [responses[i] for i in indices],
                        device=device,
                        temperature=self.temperature,
                        with_entropy=with_entropy,
                    )
                for k, i in enumerate(chunk):
                    n = len(responses[i])
                    table[0, i, :n] = result.logp[k, :n].float()
                    if with_entropy:
                        table[1, i, :n] = result.entropy[k, :n].float()
        table = self.dist.sum_(table).cpu()
        cut = [[t[i, : len(responses[i])] for i in range(len(rows))] for t in table]
        return cut[0], cut[1] if with_entropy else []

    # -- weights out: rollout engine, checkpoints, export -----------------------------------------

    def full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full parameters by name, one at a time (collective under FSDP: every process must
        iterate to the end)."""
        return sharding.full_tensors(self.module.named_parameters())

    def sync_rollout(self, engine: Any) -> None:
        """Hand the current weights to a rollout engine that does not share the trained module
        (every process calls this; those without an engine only take part in the gathers)."""
        if self.rollout_module is self.module:  # the engine generates with the trained module
            return
        named = self.full_parameters()
        if engine is None:
            for _ in named:
                pass
        else:
            engine.update_weights(named)

    def save(self, run_dir: Path, step: int, trainer_state: dict[str, Any]) -> None:
        """Checkpoint ``step``: weights, optimizer moments, RNG and ``trainer_state`` (every
        process writes its part)."""

        def extras(folder: Path) -> None:
            self.module.config.save_pretrained(folder)
            self.io.save_pretrained(folder)

        save_checkpoint(
            run_dir,
            step,
            self.dist,
            self.module,
            self.optimizer,
            {**trainer_state, "opt_steps": self.opt_steps},
            self.config.trainer.keep_last,
            extras,
        )

    def restore(self, run_dir: Path) -> dict[str, Any] | None:
        """Load the newest checkpoint of ``run_dir`` (weights, optimizer, RNG); return its
        trainer state, or None when the run has no checkpoint yet."""
        found = checkpoint_dirs(run_dir)
        if not found:
            return None
        state = load_checkpoint(found[-1], self.dist, self.module, self.optimizer)
        self.opt_steps = int(state.get("opt_steps", 0))
        return state

    def export(self, folder: Path) -> None:
        """The policy as a plain float32 model folder (``--model RUN/final`` loads it), gathered
        collectively; the main process holds the whole state in host memory while it writes."""
        gathered = sharding.full_tensors(sharding.unique_state(self.module), cpu=True)
        full = {name: tensor for name, tensor in gathered if self.dist.is_main}
        if self.dist.is_main:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.module.save_pretrained(tmp, state_dict=full)
            self.io.save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
        self.dist.barrier()
