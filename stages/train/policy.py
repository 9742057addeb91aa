"""The policy being trained: model, optimizer, optional KL reference, and their checkpoints.

Precision: the master weights and AdamW's state are always float32; the recipe's ``model.dtype``
is the *compute* dtype (``auto``: bf16 on a GPU, float32 on a CPU). Under FSDP the shards are
gathered in the compute dtype (``MixedPrecisionPolicy``) and gradients reduced in float32; under
DDP (or one process) the forward runs under ``torch.autocast`` in the compute dtype. Log-probs,
ratios and losses are float32 either way. Stepping bf16 weights directly, as before, lost most
updates at the paper's learning rate: a 1e-6 step is below bf16's resolution at 0.02.

Processes (:mod:`stages.train.dist`) and their layout (:mod:`stages.train.sharding`): every
process trains on its own slice of every micro-batch (see :mod:`stages.train.update`) and rolls
out its own slice of the prompts. The hf engine of every process generates with the trained
module itself, in the compute dtype: under DDP each process holds it whole; under FSDP all
generate in lockstep (:mod:`stages.train.generation`). A vllm engine holds weights of its own:
:meth:`Policy.sync_rollout` streams the current ones into it, one full tensor at a time.

LoRA (``model.lora``, :mod:`stages.train.lora`): the same module with adapters added in place
before it is wrapped; only they train (optimizer, clipping, DDP buckets and FSDP reduce-scatters
see only them), checkpoints hold only them, the KL reference is the module with its adapters
scaled to zero (no copy), the hf engine generates with the adapted module, a vllm engine receives
the merged weights (``W + scale B A`` under the base names, one layer at a time), and ``final/``
is the merged model unless ``trainer.export: adapter``.
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
from safetensors.torch import save_file

from stages.models.adapters import ADAPTER_WEIGHTS
from stages.models.loading import load_policy
from stages.train import batching, sharding
from stages.train import dist as distributed
from stages.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from stages.train.config import TrainConfig
from stages.train.forward import LogprobModel, response_logprobs
from stages.train.lora import Adapters
from stages.train.sharding import unique_state

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
        self.adapters: Adapters | None = None
        if config.model.lora is not None:  # before any copy or wrapper: they all see them
            self.adapters = Adapters.add(model, config.model.lora, config.model.name, self.dtype)
        elif config.model.freeze_vision:
            freeze_vision(model)
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.module = model
        self.reference = None
        if config.algo.kl_coef > 0 and self.adapters is None:  # copied before sharding
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

    def hf_engine(self, micro_batch: int) -> Any:
        """This process's hf rollout engine: the trained module itself, in the compute dtype
        (autocast where FSDP does not cast), generating in lockstep under FSDP."""
        from stages.rollout import HFEngine
        from stages.train.generation import ShardedGeneration

        lockstep = ShardedGeneration(self.model, self.dist) if self.fsdp else None
        return HFEngine(
            self.module,
            self.io,
            micro_batch_size=micro_batch,
            precision=self.autocast,
            lockstep=lockstep,
        )

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

    def reference_logprobs(
        self,
        rows: list[dict],
        responses: list[list[int]],
        group_ids: list[int] | None = None,
        shared: bool = False,
    ) -> list[torch.Tensor] | None:
        """Log-probs under the initial policy for the KL term (None without one): its frozen
        copy, or under LoRA the policy itself with its adapters off. Without ``group_ids`` every
        sample is its own group."""
        if self.config.algo.kl_coef <= 0:
            return None
        if group_ids is None:
            group_ids = list(range(len(responses)))
        if self.adapters is None:
            return self.frozen_logprobs(self.reference, rows, responses, group_ids, shared)
        with self.adapters.off(self.module):
            return self.frozen_logprobs(self.model, rows, responses, group_ids, shared)

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
        return self._frozen(model, rows, responses, group_ids, shared, with_entropy=False)[0]

    def frozen_logprobs_and_entropy(
        self,
        model: Any,
        rows: list[dict],
        responses: list[list[int]],
        group_ids: list[int],
        shared: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`frozen_logprobs` plus each token's entropy from the same forward (what the
        high-entropy token mask's step-wide threshold is computed from)."""
        return self._frozen(model, rows, responses, group_ids, shared, with_entropy=True)

    def _frozen(
        self,
        model: Any,
        rows: list[dict],
        responses: list[list[int]],
        group_ids: list[int],
        shared: bool,
        *,
        with_entropy: bool,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        world, rank, device = self.dist.world, self.dist.rank, self.dist.device
        size = self.config.optim.micro_batch
        micro = batching.micro_batches(
            range(len(rows)), group_ids, size, world, rank, grouped=shared
        )
        width = max([len(r) for r in responses] + [1])
        table = torch.zeros(2 if with_entropy else 1, len(rows), width, device=device)
        with torch.no_grad():
            for chunk in micro:
                indices = [0 if i is None else i for i in chunk]  # idle: a forward all the same
                with self.autocast():
                    result = response_logprobs(
                        model,
                        self.io,
                        [rows[i] for i in indices],
                        [responses[i] for i in indices],
                        device=device,
                        temperature=self.temperature,
                        with_entropy=with_entropy,
                        shared_prefix=shared,
                    )
                for k, i in enumerate(chunk):
                    if i is None:  # a placeholder: its forward only keeps the processes in step
                        continue
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

    def rollout_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What a vllm engine receives after an update (collective, as :meth:`full_parameters`):
        every parameter, or under LoRA the merged weights under the base model's names (vLLM's
        model has no adapters: ``W + scale B A`` per adapted layer, the rest as they are)."""
        if self.adapters is None:
            return self.full_parameters()
        return self.adapters.merged(self.full_parameters())

    def sync_rollout(self, engine: Any) -> None:
        """Stream the current weights into a rollout engine that holds its own (vllm): full
        tensors, gathered one at a time from the FSDP shards, on this process's device (every
        process calls this: the gathers are collective). The hf engine shares the module."""
        if getattr(engine, "model", None) is self.module:
            return
        engine.update_weights(self.rollout_tensors())

    def _weights(self) -> tuple[str, dict[str, torch.Tensor]]:
        """What a checkpoint holds, and its file stem: every tensor, or under LoRA the adapters
        in peft's format (a DDP checkpoint then loads as an adapter folder)."""
        if self.adapters is None:
            return "model", unique_state(self.module)
        return "adapter_model", self.adapters.state(self.module)

    def _write_model_files(self, folder: Path) -> None:
        """The model's config (or peft's adapter config) and the processor files."""
        if self.adapters is None:
            self.module.config.save_pretrained(folder)
        else:
            self.adapters.write_config(folder)
        self.io.save_pretrained(folder)

    def save(self, run_dir: Path, step: int, trainer_state: dict[str, Any]) -> None:
        """Checkpoint ``step``: weights, optimizer moments, RNG and ``trainer_state`` (every
        process writes its part)."""
        stem, weights = self._weights()
        save_checkpoint(
            run_dir,
            step,
            self.dist,
            self.module,
            self.optimizer,
            {**trainer_state, "opt_steps": self.opt_steps},
            self.config.trainer.keep_last,
            self._write_model_files,
            weights=weights,
            stem=stem,
        )

    def restore(self, run_dir: Path) -> dict[str, Any] | None:
        """Load the newest checkpoint of ``run_dir`` (weights, optimizer, RNG); return its
        trainer state, or None when the run has no checkpoint yet."""
        found = checkpoint_dirs(run_dir)
        if not found:
            return None
        stem, weights = self._weights()
        state = load_checkpoint(
            found[-1], self.dist, self.module, self.optimizer, weights=weights, stem=stem
        )
        self.opt_steps = int(state.get("opt_steps", 0))
        return state

    def export(self, folder: Path) -> None:
        """The policy as a plain float32 model folder (``--model RUN/final`` loads it; under
        LoRA the merged model), or with ``trainer.export: adapter`` a peft adapter folder;
        gathered collectively, the main process holding the whole state in host memory."""
        adapter_only = self.adapters is not None and self.config.trainer.export == "adapter"
        state = self._weights()[1] if adapter_only else unique_state(self.module)
        gathered = sharding.full_tensors(state, cpu=True)
        if self.adapters is not None and not adapter_only:
            gathered = self.adapters.merged(gathered)
        full = {name: tensor.float() for name, tensor in gathered if self.dist.is_main}
        if self.dist.is_main:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if adapter_only:
                tmp.mkdir(parents=True)
                save_file({k: v.contiguous() for k, v in full.items()}, str(tmp / ADAPTER_WEIGHTS))
                self._write_model_files(tmp)
            else:
                self.module.save_pretrained(tmp, state_dict=full)
                self.io.save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
        self.dist.barrier()
