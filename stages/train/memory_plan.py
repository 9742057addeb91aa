"""The memory plan: bytes per GPU of a training run, from the recipe and the model's config alone.

``mgpo train --plan`` prints it; ``mgpo train`` refuses a run whose plan does not fit before any
weight is loaded. Parameter shapes come from the model's config on the meta device
(:mod:`stages.models.architecture`). The plan describes the GPU trainer: fp32 master weights and
AdamW state, compute in the recipe's ``model.dtype`` (``auto``: bf16), FSDP2 ``fully_shard`` per
decoder layer / vision block plus the root under ``trainer.strategy: fsdp``, every row of a
micro-batch at full length. Notation, per GPU:

  N processes (one per GPU), G bytes of GPU memory; c compute bytes (2 for bf16/fp16, 4 for fp32)
  P parameters, Pt trainable ones (the vision tower is frozen by ``model.freeze_vision``),
  nt trainable tensors; shard(X) = sum over X's tensors of ceil(dim0 / N) * rest under fsdp
  (rank 0 holds the largest chunk), the whole X under ddp
  R / Rt: (trainable) parameters of the root, outside every decoder layer and vision block;
  U / Ut: (trainable) parameters of the largest decoder layer or vision block
  B = optim.micro_batch rows per process, Lp = rollout.max_prompt_tokens, Ln =
  rollout.max_new_tokens, T = B * (Lp + Ln) text tokens; vision tokens per row
  Vi = min(Lp, max_pixels // (patch * merge)^2) (one image per prompt at the processor's pixel
  budget, never more than the prompt holds), Tv = B * merge^2 * Vi vision patches
  h, I, layers, heads, kv = kv_heads * head_dim, vocab: the language model; hv, Iv, depth,
  heads_v: the vision tower

LoRA (``model.lora``): Pt = the adapters (rank x (in + out) per adapted layer); the base is frozen
in the compute dtype (c * shard(P), no masters), so are the vision tower and the lm_head, no KL
copy (the adapters switch off), and each adapted layer saves c * rank more per token.

Exact (counted from the config; the tests measure the first three on the tiny model):
  parameters       4 * shard(P)                        fp32 master weights
  optimizer        8 * shard(Pt) + 4 * nt              AdamW exp_avg, exp_avg_sq, step scalar
  gradients        4 * shard(Pt)                       fp32, freed by zero_grad after each step
  rollout engine   u * G                               vllm: what the engine may use (weights, KV
                                                       cache, activations), freed while it sleeps;
                                                       u = rollout.gpu_memory_utilization, or with
                                                       ``auto`` what the held items leave of the GPU
                                                       (rounded down to 0.01, at most 0.95)
Estimates (marked ~ in the table):
  log-prob chunks  rows * vocab * (4 + 4 + c)          two fp32 buffers and the bf16 matmul
                   + c * B * Ln * h + 12 * B * Ln      output of :func:`logprobs_from_hidden`
                   (+ c * vocab * h under ddp)         (rows = min(CHUNK_ELEMENTS // vocab,
                                                       B * Ln)), the gradient of the hidden
                                                       states, per-token floats, the lm_head
                                                       gradient (no c-byte buffer when c = 4)
  DDP buckets      4 * Pt (ddp, N > 1)                 DDP's flat gradient buckets: one more copy
  bf16 weights     c * Pt (ddp, c < 4)                 autocast's cache of cast weights
  gathered layers  c * (R + 2 U) (fsdp)                root gathered throughout, one layer in use
                                                       and the next prefetched
  unsharded grads  c * Rt + (c + 4) * Ut (fsdp)        root gradient through the backward, one
                                                       layer's gradient and its fp32 reduce copy
  activations      per token per layer, saved for backward (RMSNorm, attention, SwiGLU):
                   a(h, kv, I, heads) = c * (7h + 2kv + 4I) + 8h + 4 heads
                   without checkpointing: text T * layers * a, vision Tv * depth * av
                   with checkpointing: each layer keeps its input (c * h per token) and one layer
                   is recomputed at a time: T * (layers * c * h + a), Tv * (depth * c * hv + av)
                   + T * (4 + 3c) * h and Tv * (4 + 3c) * hv (final norm, residual gradient)
                   peak = vision saved + max(text, vision block recomputed): the language
                   model's backward runs first, the vision tower's after it; a frozen tower saves
                   nothing. For a small bf16 Qwen2.5-VL on CPU the saved part is within ~12% of
                   the bytes autograd saves (tests/test_memory_plan.py measures it)
  KL reference     4 * shard(P) (algo.kl_coef > 0)     a frozen copy of the policy
  hf KV cache      rollout.micro_batch * (Lp + Ln) * 2 * layers * kv * c + 8 * micro * vocab
  runtime          2 GiB                               CUDA context, NCCL buffers, allocator slack

Phases: parameters, optimizer and runtime are held all the time. The vllm engine belongs to the
rollout phase only: colocated with the trainer, it sleeps during the update (vLLM's sleep level
2 frees its weights and KV cache; what it keeps while asleep, its CUDA graph pool and small
buffers, is left to the runtime reserve). The rest is alive in the update or in the rollout:
total = held + max(update, rollout). The plan assumes
flash/memory-efficient attention (no [L, L] score matrices), as bf16 SDPA uses on GPU; it does not
count the frozen old-log-prob forward (no gradient, smaller than the update) or the allocator's
fragmentation beyond the runtime reserve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stages.errors import MgpoError
from stages.models.architecture import Architecture, Parameter, architecture
from stages.train.config import TrainConfig
from stages.train.logprobs import CHUNK_ELEMENTS
from stages.train.lora import adapter_parameters

GIB = 2**30
RUNTIME_BYTES = 2 * GIB
HELD, UPDATE, ROLLOUT = "always", "update", "rollout"
Params = tuple[Parameter, ...]


@dataclass(frozen=True)
class Item:
    """One line of the plan: bytes per GPU, when they are alive, and the key that changes them."""

    name: str
    bytes: int
    phases: tuple[str, ...]  # (HELD,) or some of (UPDATE, ROLLOUT)
    key: str  # "" : no recipe key changes it (a larger GPU does)
    estimate: bool = False


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    processes: int
    gpu_bytes: int
    strategy: str
    items: tuple[Item, ...]  # counted in the total
    aside: tuple[Item, ...]  # shown for comparison only (activations the other way)
    parameters: int
    trainable: int
    image_tokens: int  # language-model tokens of a row's image (Vi)

    @property
    def by_name(self) -> dict[str, int]:
        return {item.name: item.bytes for item in self.items}

    def phase_bytes(self, phase: str) -> int:
        return sum(item.bytes for item in self.items if phase in item.phases)

    @property
    def total(self) -> int:
        return self.phase_bytes(HELD) + max(self.phase_bytes(UPDATE), self.phase_bytes(ROLLOUT))

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes

    @property
    def largest(self) -> Item:
        return max(self.items, key=lambda item: item.bytes)

    @property
    def key(self) -> str:
        """The recipe key to change first: the largest item's."""
        return self.largest.key


def compute_bytes(dtype: str) -> int:
    """Bytes per element of the forward/backward: the recipe's dtype (``auto``: bf16 on GPU)."""
    return 4 if dtype in ("float32", "fp32") else 2


def plan_memory(
    config: TrainConfig, *, processes: int | None = None, gpu_bytes: int | None = None
) -> MemoryPlan:
    """The plan of ``config`` on ``processes`` GPUs of ``gpu_bytes`` each (default: the recipe's
    ``plan.gpus`` x ``plan.gpu_memory_gib``). Reads the model's config, never its weights."""
    arch = architecture(config.model.name, trust_remote_code=config.model.trust_remote_code)
    n = processes if processes is not None else config.plan.gpus
    gpu = gpu_bytes if gpu_bytes is not None else int(config.plan.gpu_memory_gib * GIB)
    if n < 1 or gpu <= 0:
        raise MgpoError(f"memory plan: need at least one GPU with memory, got {n} x {gpu} bytes")
    fsdp = config.trainer.strategy == "fsdp"
    c = compute_bytes(config.model.dtype)
    lora = config.model.lora
    adapters = adapter_parameters(arch, lora) if lora is not None else ()
    frozen = config.model.freeze_vision
    trainable = adapters or tuple(p for p in arch.parameters if not (frozen and p.vision))
    ckpt = config.model.gradient_checkpointing
    state_key = "model.name" if fsdp else "trainer.strategy"
    masters = 4 * _shard(arch.parameters, n, fsdp)
    items = [Item("parameters (fp32 master)", masters, (HELD,), state_key)]
    if lora is not None:  # the base frozen in the compute dtype; the adapters' rank sizes the rest
        base, adapted = c * _shard(arch.parameters, n, fsdp), 4 * _shard(adapters, n, fsdp)
        items = [Item("base weights (frozen, compute dtype)", base, (HELD,), state_key)]
        state_key = "model.lora.rank"
        items.append(Item("LoRA adapters (fp32 master)", adapted, (HELD,), state_key))
    items += [
        Item(
            "optimizer (AdamW fp32 moments)",
            8 * _shard(trainable, n, fsdp) + 4 * len(trainable),
            (HELD,),
            state_key,
        ),
        Item("gradients (fp32)", 4 * _shard(trainable, n, fsdp), (UPDATE,), state_key),
        *_weight_copies(
            arch.parameters + adapters, trainable, n, fsdp, c, config.rollout.backend == "hf"
        ),
        Item(
            _activation_name(ckpt),
            _activations(config, arch, c, ckpt),
            (UPDATE,),
            "optim.micro_batch" if ckpt else "model.gradient_checkpointing",
            True,
        ),
        Item(
            "log-prob chunks",
            _logprob_bytes(config, arch, c, fsdp),
            (UPDATE,),
            "optim.micro_batch",
            True,
        ),
        Item("runtime (CUDA context, NCCL, slack)", RUNTIME_BYTES, (HELD,), "", True),
    ]
    if config.algo.kl_coef > 0 and lora is None:
        items.append(
            Item(
                "KL reference model",
                4 * _shard(arch.parameters, n, fsdp),
                (HELD,),
                "algo.kl_coef",
                True,
            )
        )
    held = sum(item.bytes for item in items if HELD in item.phases)
    items[-1:-1] = _rollout_items(config, arch, c, gpu, held)
    aside = Item(
        _activation_name(not ckpt),
        _activations(config, arch, c, not ckpt),
        (UPDATE,),
        "model.gradient_checkpointing",
        True,
    )
    return MemoryPlan(
        model=config.model.name,
        processes=n,
        gpu_bytes=gpu,
        strategy=config.trainer.strategy,
        items=tuple(i for i in items if i.bytes > 0),
        aside=(aside,),
        parameters=sum(p.numel for p in arch.parameters + adapters),
        trainable=sum(p.numel for p in trainable),
        image_tokens=vision_tokens(config, arch),
    )


def _activation_name(checkpointing: bool) -> str:
    return f"activations ({'with' if checkpointing else 'no'} checkpointing)"


def _shard(params: tuple[Parameter, ...], n: int, fsdp: bool) -> int:
    """Elements this process holds: FSDP2 splits every tensor on dim 0 (rank 0's chunk)."""
    if not fsdp:
        return sum(p.numel for p in params)
    return sum(math.ceil(p.shape[0] / n) * math.prod(p.shape[1:]) if p.shape else 1 for p in params)


def _units(params: tuple[Parameter, ...]) -> tuple[int, int]:
    """(root elements, elements of the largest decoder layer / vision block)."""
    sizes: dict[str, int] = {}
    for p in params:
        sizes[p.unit] = sizes.get(p.unit, 0) + p.numel
    root = sizes.pop("", 0)
    return root, max(sizes.values(), default=0)


def _weight_copies(
    weights: Params, trainable: Params, n: int, fsdp: bool, c: int, hf: bool
) -> list[Item]:
    """Weights and gradients outside the fp32 shards: FSDP's gathered layers, DDP's copies."""
    pt = sum(p.numel for p in trainable)
    if not fsdp:
        out = []
        if n > 1:
            out.append(Item("DDP gradient buckets", 4 * pt, (HELD,), "trainer.strategy", True))
        if c < 4:
            out.append(
                Item("bf16 weight copies (autocast)", c * pt, (UPDATE,), "trainer.strategy", True)
            )
        return out
    root, unit = _units(weights)
    root_t, unit_t = _units(trainable)
    reduce_copy = 4 if c != 4 else 0
    return [
        Item(
            "gathered layers (fsdp)",
            c * (root + 2 * unit),
            (UPDATE, ROLLOUT) if hf else (UPDATE,),  # hf generates with the sharded policy
            "model.name",
            True,
        ),
        Item(
            "unsharded gradients (fsdp)",
            c * root_t + (c + reduce_copy) * unit_t,
            (UPDATE,),
            "model.name",
            True,
        ),
    ]


def layer_bytes(hidden: int, kv: int, intermediate: int, heads: int, c: int) -> int:
    """Bytes one pre-norm attention + SwiGLU layer saves for backward, per token: the two RMSNorms'
    fp32 inputs (8h) and normalised outputs (2ch), q, k, v, the attention output and its copy for
    the output projection, the MLP's gate, up, activation and product, the attention's fp32
    log-sum-exp per head."""
    return c * (7 * hidden + 2 * kv + 4 * intermediate) + 8 * hidden + 4 * heads


def vision_tokens(config: TrainConfig, arch: Architecture) -> int:
    """Language-model tokens of a row's image: the pixel budget's, at most the prompt budget."""
    if arch.vision is None:
        return 0
    return min(config.rollout.max_prompt_tokens, arch.vision.tokens_per_image)


def _activations(config: TrainConfig, arch: Architecture, c: int, checkpointing: bool) -> int:
    """Peak bytes saved for backward by one micro-batch (see the module docstring)."""
    rows = config.optim.micro_batch
    t = arch.text
    tokens = rows * (config.rollout.max_prompt_tokens + config.rollout.max_new_tokens)
    a = layer_bytes(t.hidden, t.kv_heads * t.head_dim, t.intermediate, t.heads, c)
    lora = config.model.lora
    if lora is not None:  # each adapted layer saves A x (rank values per token) for B's gradient
        adapted = len(adapter_parameters(arch, lora)) // 2
        a += c * lora.rank * math.ceil(adapted / t.layers)
    per_layer = c * t.hidden if checkpointing else a
    text = tokens * (t.layers * per_layer + (4 + 3 * c) * t.hidden + (a if checkpointing else 0))
    v = arch.vision
    if v is None or config.model.freeze_vision or lora is not None:
        return text
    patches = rows * v.merge**2 * vision_tokens(config, arch)
    av = layer_bytes(v.hidden, v.hidden, v.intermediate, v.heads, c)
    per_block = c * v.hidden if checkpointing else av
    vision = patches * (v.depth * per_block + (4 + 3 * c) * v.hidden)
    return vision + max(text, patches * av if checkpointing else 0)


def _logprob_bytes(config: TrainConfig, arch: Architecture, c: int, fsdp: bool) -> int:
    """The chunked lm_head log-probs of the update (:func:`logprobs_from_hidden`)."""
    vocab, hidden = arch.text.vocab, arch.text.hidden
    positions = config.optim.micro_batch * config.rollout.max_new_tokens
    rows = min(max(1, CHUNK_ELEMENTS["other"] // vocab), positions)
    buffers = rows * vocab * (8 + (c if c != 4 else 0))
    frozen = fsdp or config.model.lora is not None  # fsdp: in the root's gradient
    head_grad = 0 if frozen else c * vocab * hidden
    return buffers + positions * (c * hidden + 12) + head_grad


MAX_ENGINE_FRACTION = 0.95


def engine_fraction(config: TrainConfig, held: int, gpu: int) -> float:
    """The vllm engine's share of each GPU: the recipe's, or with ``auto`` what the items held
    through the rollout (``held`` bytes) leave, rounded down to 0.01, at most 0.95."""
    given = config.rollout.gpu_memory_utilization
    if given != "auto":
        return float(given)
    left = math.floor(100 * (gpu - held) / gpu) / 100
    return max(0.0, min(MAX_ENGINE_FRACTION, left))


def _rollout_items(
    config: TrainConfig, arch: Architecture, c: int, gpu: int, held: int
) -> list[Item]:
    r = config.rollout
    if r.backend == "vllm":
        fraction = engine_fraction(config, held, gpu)
        name = f"rollout engine (vllm, {fraction:g} of the GPU)"
        return [Item(name, int(fraction * gpu), (ROLLOUT,), "rollout.gpu_memory_utilization")]
    t = arch.text
    length = r.max_prompt_tokens + r.max_new_tokens
    kv_cache = r.micro_batch * length * 2 * t.layers * t.kv_heads * t.head_dim * c
    logits = 8 * r.micro_batch * t.vocab  # fp32 logits and probabilities of one decoding step
    return [
        Item(
            "rollout KV cache (hf generate)",
            kv_cache + logits,
            (ROLLOUT,),
            "rollout.micro_batch",
            True,
        )
    ]


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
