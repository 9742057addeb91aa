"""The training configuration: what a recipe file holds, one frozen dataclass per section.

Every field is a recipe key (``section.field``) and can be overridden on the command line with
``--set section.field=value``; the common ones also have their own flags (``--algo``, ``--alpha``...).
A number's range is declared once, in its type (``PositiveInt``, ``UnitFloat``...: see
:mod:`stages.config`), and every float must be finite; ``check`` refuses the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stages.config import (
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitFloat,
    PositiveFloat,
    PositiveInt,
    UnitFloat,
    check_values,
)
from stages.errors import MgpoError

# The attention and MLP projections of Llama-style decoder layers (Llama, Qwen2, Qwen2.5-VL's
# language model, Mistral, SmolLM2): what LoRA adapts by default.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (``model.lora``; absent or null: every parameter trains). Only the adapters
    train, with their AdamW state, in float32; the base weights are frozen and held in the
    compute dtype. Adapters go on the language model only: the vision tower stays frozen."""

    rank: PositiveInt = 16
    alpha: PositiveFloat = 32.0  # the update is scaled by alpha / rank
    # Dropout on the adapters' input during the update. 0 by default: with dropout the update's
    # log-probs are noisy copies of the policy's, and so are the importance ratios.
    dropout: UnitFloat = 0.0
    # Linear layers of the language model whose name ends with one of these (peft's rule).
    target_modules: tuple[str, ...] = LORA_TARGETS


@dataclass(frozen=True)
class ModelConfig:
    name: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # hub id, local directory, or "tiny"
    # The compute dtype (forward/backward): auto = bf16 on GPU, float32 on CPU. Master weights
    # and optimizer state are float32 whatever this says.
    dtype: str = "auto"  # auto | float32 | bf16
    trust_remote_code: bool = False
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None  # e.g. --set model.lora.rank=16 turns LoRA on


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/geometry3k/train"  # prompt shards
    val: str | None = None  # held-out prompt shards for validation (greedy)
    val_limit: PositiveInt | None = None  # validate on the first K held-out prompts only
    shuffle: bool = True
    # Prompts longer than rollout.max_prompt_tokens (image tokens included): dropped, with their
    # ids in RUN/overlong_prompts.json (true), or the run stops naming the first one (false).
    filter_overlong: bool = True


@dataclass(frozen=True)
class RolloutConfig:
    backend: str = "hf"  # hf | vllm
    batch_prompts: PositiveInt = 512  # prompts per training step (the rollout batch)
    n: PositiveInt = 5  # samples per prompt
    temperature: NonNegativeFloat = 1.0
    top_p: OpenUnitFloat = 1.0
    max_new_tokens: PositiveInt = 2048
    max_prompt_tokens: PositiveInt = 2048  # longer prompts: see data.filter_overlong
    micro_batch: PositiveInt = 64  # sequences (prompt x sample) per generate call (hf)
    # vLLM's share of each GPU during the rollout (it sleeps during the update); auto: what the
    # memory plan's held items leave (mgpo train --plan)
    gpu_memory_utilization: OpenUnitFloat | str = "auto"
    tensor_parallel_size: PositiveInt = 1  # vllm: processes (GPUs) per engine
    # DAPO dynamic sampling / GPG threshold: extra rollout rounds at most
    max_resample_rounds: NonNegativeInt = 3


@dataclass(frozen=True)
class ScoreConfig:
    reward: str = "math"  # math | short_answer | path/to/file.py:function
    workers: PositiveInt = 1
    timeout_s: PositiveFloat = 5.0
    format_weight: UnitFloat | None = None  # None: the reward's default (math: 0.1)


@dataclass(frozen=True)
class AlgoConfig:
    """The loss and its options (``mgpo train --list-algos`` lists them per loss). ``None``
    means the loss's own default; a key the chosen loss does not take is an error."""

    name: str = "mgpo"  # grpo | gspo | mgpo | dapo | dr_grpo | gpg | sapo | cispo | gmpo
    alpha: float | str = 0.5  # MGPO blend on selected tokens, or "dyn"
    beta: UnitFloat = 0.5  # MGPO: fraction of most uncertain tokens blended
    eps_low: NonNegativeFloat | None = None  # None: the algorithm's own default
    eps_high: NonNegativeFloat | None = None
    kl_coef: NonNegativeFloat = 0.0  # k3 KL to the initial policy (0: off, as in the paper)
    clip_ratio_c: float | None = None  # dual-clip bound for A < 0 (clipped losses; 3.0 when on)
    tau_pos: float | None = None  # SAPO gate temperature for A > 0 (default 1.0)
    tau_neg: float | None = None  # SAPO gate temperature for A <= 0 (default 1.05)
    uncertainty: str | None = None  # MGPO token ranking: neg_logp (paper) | entropy
    selection: str | None = None  # MGPO: per_response | paper (the paper's listing, literally)
    entropy_top: float | None = None  # keep the top rho of tokens by entropy (token-level losses)
    rollout_correction: str | None = None  # none | token_truncate | token_mask | sequence_*
    rollout_correction_max: float | None = None  # cap of pi_trainer / pi_engine (default 2.0)
    scale_rewards: str | None = None  # group | batch | none (default: the algorithm's own)
    baseline: str = "mean"  # advantage baseline: mean (GRPO) | median (MC-GRPO)
    dynamic_sampling: bool | None = None  # None: on for dapo only
    gpg_threshold: UnitFloat = 0.0  # GPG: carry valid samples over while below this fraction


LOSS_KEYS = (
    "clip_ratio_c",
    "tau_pos",
    "tau_neg",
    "uncertainty",
    "selection",
    "entropy_top",
    "rollout_correction",
    "rollout_correction_max",
)
"""Algo keys passed to the loss as options of the same name when set (not None)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: PositiveFloat = 1e-6
    weight_decay: NonNegativeFloat = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: NonNegativeInt = 0
    grad_clip: PositiveFloat = 1.0
    epochs: PositiveInt = 1  # passes over each rollout batch
    mini_batches: PositiveInt = 1  # optimizer steps per epoch
    micro_batch: PositiveInt = 8  # sequences per forward/backward (gradient accumulation)


@dataclass(frozen=True)
class TrainerConfig:
    steps: PositiveInt = 100
    seed: int = 0
    val_every: NonNegativeInt = 10  # 0: never
    save_every: NonNegativeInt = 10  # 0: only at the end
    keep_last: NonNegativeInt = 2  # 0: keep every checkpoint
    strategy: str = "ddp"  # ddp (every process holds the whole model) | fsdp (FSDP2 sharding)
    # Encode each prompt once per group in the old log-probs and the update (one packed row per
    # prompt, stages/train/shared_prefix.py): on | off | auto (on where it costs less; `on`
    # packs even when responses are much longer than prompts, where it can be several times
    # slower). YAML reads a bare on / off as true / false: both spellings are accepted.
    shared_prefix: str | bool = "auto"
    # How long a process waits in a collective before giving up: the other processes wait while
    # the main one rolls out, scores and validates, so this must outlast a rollout phase.
    collective_timeout_s: PositiveFloat = 7200.0
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: NonNegativeInt = (
        0  # torch CPU threads (0: torch's default); 1 is fastest for tiny models
    )
    wandb: bool = False
    require_gpu: bool = False  # refuse to start on a machine without a GPU
    # final/ under model.lora: merged (a plain model folder) | adapter (a peft adapter folder)
    export: str = "merged"

    def __post_init__(self) -> None:
        if isinstance(self.shared_prefix, bool):
            object.__setattr__(self, "shared_prefix", "on" if self.shared_prefix else "off")


@dataclass(frozen=True)
class PlanConfig:
    """The memory plan (``mgpo train --plan``): the node a recipe is sized for, and the check."""

    gpus: int = 1  # GPUs (one process each) of the target node, used where this machine has none
    gpu_memory_gib: float = 80.0  # memory of each of those GPUs
    check: str = (
        "auto"  # auto: refuse a GPU run whose plan does not fit | always: also on CPU | never
    )


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    run_dir: str = "runs/latest"

    def __post_init__(self) -> None:
        check(self)


COMPUTE_DTYPES = ("auto", "float32", "fp32", "bf16", "bfloat16")
ALGORITHM_NAMES = ("grpo", "gspo", "mgpo", "dapo", "dr_grpo", "gpg", "sapo", "cispo", "gmpo")


def check(config: TrainConfig) -> None:
    """Reject settings that cannot be right, with one line naming the key."""
    check_values(config)  # every number finite and inside its declared range
    algo = config.algo
    if algo.name not in ALGORITHM_NAMES:
        raise MgpoError(f"algo.name '{algo.name}': expected one of {', '.join(ALGORITHM_NAMES)}")
    if isinstance(algo.alpha, str) and algo.alpha != "dyn":
        raise MgpoError(f"algo.alpha '{algo.alpha}': expected a number in [0, 1] or 'dyn'")
    if not isinstance(algo.alpha, str) and not 0.0 <= algo.alpha <= 1.0:
        raise MgpoError(f"algo.alpha {algo.alpha}: expected a number in [0, 1] or 'dyn'")
    if config.rollout.gpu_memory_utilization not in ("auto",) and isinstance(
        config.rollout.gpu_memory_utilization, str
    ):
        raise MgpoError(
            f"rollout.gpu_memory_utilization '{config.rollout.gpu_memory_utilization}':"
            " expected auto or a number in (0, 1]"
        )
    if algo.scale_rewards not in (None, "group", "batch", "none"):
        raise MgpoError(f"algo.scale_rewards '{algo.scale_rewards}': expected group, batch or none")
    if algo.baseline not in ("mean", "median"):
        raise MgpoError(f"algo.baseline '{algo.baseline}': expected mean or median")
    check_loss_options(algo)
    if config.rollout.backend not in ("hf", "vllm"):
        raise MgpoError(f"rollout.backend '{config.rollout.backend}': expected hf or vllm")
    if config.optim.schedule not in ("constant", "linear", "cosine"):
        raise MgpoError(
            f"optim.schedule '{config.optim.schedule}': expected constant, linear or cosine"
        )
    if config.trainer.strategy not in ("ddp", "fsdp"):
        raise MgpoError(f"trainer.strategy '{config.trainer.strategy}': expected ddp or fsdp")
    if config.trainer.shared_prefix not in ("auto", "on", "off"):
        raise MgpoError(
            f"trainer.shared_prefix '{config.trainer.shared_prefix}': expected auto, on or off"
        )
    _check_plan(config.plan)
    _check_lora(config)
    if config.trainer.collective_timeout_s <= 0:
        raise MgpoError(
            f"trainer.collective_timeout_s must be positive, got {config.trainer.collective_timeout_s}"
        )
    if config.model.dtype not in COMPUTE_DTYPES:
        hint = (
            " (fp16 training would need loss scaling; use bf16)"
            if config.model.dtype in ("fp16", "float16")
            else ""
        )
        raise MgpoError(
            f"model.dtype '{config.model.dtype}': expected one of {', '.join(COMPUTE_DTYPES)}{hint}"
        )


def _check_lora(config: TrainConfig) -> None:
    lora, export = config.model.lora, config.trainer.export
    if export not in ("merged", "adapter"):
        raise MgpoError(f"trainer.export '{export}': expected merged or adapter")
    if export == "adapter" and lora is None:
        raise MgpoError("trainer.export adapter needs LoRA (model.lora): there is no adapter")
    if lora is not None and not lora.target_modules:
        raise MgpoError("model.lora.target_modules is empty: name at least one linear layer")


def _check_plan(plan: PlanConfig) -> None:
    if plan.gpus < 1:
        raise MgpoError(f"plan.gpus must be at least 1, got {plan.gpus}")
    if plan.gpu_memory_gib <= 0:
        raise MgpoError(f"plan.gpu_memory_gib must be positive, got {plan.gpu_memory_gib}")
    if plan.check not in ("auto", "always", "never"):
        raise MgpoError(f"plan.check '{plan.check}': expected auto, always or never")


def check_loss_options(algo: AlgoConfig) -> None:
    """The loss options of the recipe, checked by the loss registry now rather than at the first
    update: a key the loss does not take, or a bad value, is one line naming the key."""
    from stages.train import algos

    accepted = algos.options(algo.name)
    for key in LOSS_KEYS:
        value = getattr(algo, key)
        if value is not None and key not in accepted:
            raise MgpoError(f"algo.{key}: {algo.name} has no option {key}")
    try:
        algos.check_options(algo.name, loss_options(algo, accepted))
    except MgpoError as error:
        raise MgpoError(f"algo: {error}") from None


def loss_options(algo: AlgoConfig, accepted: dict) -> dict:
    """The options the loss ``algo.name`` receives from the recipe (those it accepts)."""
    wanted: dict = {"alpha": algo.alpha, "beta": algo.beta}
    if algo.kl_coef:
        wanted["kl_coef"] = algo.kl_coef
    for key in ("eps_low", "eps_high", *LOSS_KEYS):
        if getattr(algo, key) is not None:
            wanted[key] = getattr(algo, key)
    return {k: v for k, v in wanted.items() if k in accepted}
