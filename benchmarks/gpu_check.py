"""One-GPU check of the training path at the paper's scale: memory, speed, precision, learning.

The real check, on one CUDA GPU (written for one H200: torch 2.11 / CUDA 13, transformers,
accelerate, pyarrow, pyyaml, typer, rich, pillow, jinja2; no internet, no ``datasets``,
``math-verify`` or vLLM needed), in at most 8 minutes:

    python benchmarks/gpu_check.py | grep '^{'

The same code at toy sizes on a CPU (what the test suite runs, under half a minute):

    python benchmarks/gpu_check.py --dry-run

It prints one JSON line per result (progress goes to stderr):

1. ``update`` (response widths 512 and 2048): a random-weight model of the published
   Qwen2.5-VL-3B architecture (``stages/models/configs/qwen2_5_vl_3b.json``, 3.75B parameters,
   built on the GPU; the tiny model's tokenizer and image processor encode the prompts, since
   token ids are random here anyway) is trained by the real update (``stages.train.update``) with
   the 3B recipe's policy: FSDP2, float32 master weights and AdamW state, bf16 compute, activation
   checkpointing, log-probs from hidden states through the chunked ``lm_head``. The batch holds
   image prompts (448 x 448 pixels, 256 vision tokens) with responses of exactly that width, in
   one on-policy optimizer step. Reported: peak GPU memory (``peak_gib``; ``plan_gib`` is the
   memory plan's figure for the same setting), update tokens/s and model FLOPs utilisation
   (``6 N T`` for the dense layers over all tokens, the ``lm_head`` over response tokens only,
   causal attention ``6 L H S^2`` per sequence, the vision blocks over their patches;
   recomputation by checkpointing is not counted, as usual for MFU).
2. ``precision``: the fraction of weights the first update at lr 1e-6 changes (float32 masters),
   and the fraction that would have changed had the weights been stored in bf16, as before.
3. ``generate``: tokens/s of the trainer's hf engine on the same model: ``generate`` with the
   FSDP-sharded policy itself (the lockstep path every process takes; bf16 compute).
4. ``vllm_*`` (only where vLLM is installed, on a GPU; else one ``vllm`` line saying why not):
   the trainer's colocated vLLM engine on the same model (dummy weights at start, then the
   policy's streamed in): ``vllm_device`` (the device its worker runs on, against this process's),
   ``vllm_weight_sync`` (seconds to stream the FSDP policy's 3.75B parameters into it, one
   gathered tensor at a time, awake and after a sleep), ``vllm_sleep`` (GiB of GPU memory the
   sleep frees), ``vllm_generate`` (tokens/s on the ``generate`` check's prompts, and the ratio to
   the hf engine's).
5. ``tiny_recipe``: the built-in tiny recipe trained on the GPU from scratch (``shapes`` colour
   level), with its held-out accuracy after the last step.

``--lora`` runs checks 1-3 with LoRA instead (``model.lora.rank`` 64 on every attention and MLP
projection of the language model, lr 1e-5; needs ``peft``): ``update_lora`` (peak memory against
the plan, which then counts the bf16 base and the float32 adapters; the MFU counts what LoRA
computes: no weight gradients for the frozen base, no backward through the frozen vision tower)
and ``precision_lora`` (the fraction of adapter weights the first update changes, and of base
weights, which must be 0).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHITECTURE = ROOT / "stages" / "models" / "configs" / "qwen2_5_vl_3b.json"
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # bf16 dense
FULL = {"widths": (512, 2048), "image": 448, "sequences": 16, "group": 4, "micro_batch": 8}
FULL.update({"generate_tokens": 256, "tiny_steps": 150})
TOY = {"widths": (16, 32), "image": 56, "sequences": 4, "group": 2, "micro_batch": 2}
TOY.update({"generate_tokens": 8, "tiny_steps": 2})


def log(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def plan_gib(config: Any, width: int, prompt_tokens: int, gpu_bytes: int) -> float:
    """The memory plan's figure for this update, to print beside the measured peak.

    ``stages.train.memory_plan.plan_memory`` for the published 3B architecture on one GPU, with
    the prompt and response lengths of this batch: the held items (parameters, optimizer) plus the
    update's (gradients, weight copies, activations, log-prob chunks). The runtime reserve (CUDA
    context, allocator slack) and the rollout phase are left out: ``torch.cuda.max_memory_allocated``
    sees neither.
    """
    import dataclasses

    from stages.train.memory_plan import HELD, UPDATE, plan_memory

    planned = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, name="Qwen/Qwen2.5-VL-3B-Instruct"),
        rollout=dataclasses.replace(
            config.rollout, max_prompt_tokens=prompt_tokens, max_new_tokens=width
        ),
    )
    plan = plan_memory(planned, processes=1, gpu_bytes=gpu_bytes)
    counted = [
        item.bytes
        for item in plan.items
        if not item.name.startswith("runtime") and ({HELD, UPDATE} & set(item.phases))
    ]
    return sum(counted) / 2**30


# -- the random-weight 3B-architecture model --------------------------------------------------------


def architecture(dry_run: bool, io: Any) -> Any:
    """The published config (toy-sized for a dry run) with the tiny tokenizer's vision ids."""
    from transformers import AutoConfig

    data = json.loads(ARCHITECTURE.read_text())
    data.pop("_comment", None)
    if dry_run:
        data.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        data.update(num_attention_heads=4, num_key_value_heads=2)
        data["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        data["vision_config"].update(depth=2, hidden_size=32, intermediate_size=64, num_heads=2)
        data["vision_config"].update(out_hidden_size=64, fullatt_block_indexes=[1])
    for key, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ):
        data[key] = io.tokenizer.convert_tokens_to_ids(token)
    return AutoConfig.for_model(**data)


def build(dry_run: bool, device: torch.device, image: int) -> tuple[Any, Any]:
    """(model, io): random float32 weights made on ``device``, the tiny model's processor."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from stages.models.loading import load_policy

    _, io = load_policy("tiny")
    processor = io.encoder.image_processor
    processor.size = {"shortest_edge": 56 * 56, "longest_edge": image * image}
    for key, value in (("min_pixels", 56 * 56), ("max_pixels", image * image)):
        if hasattr(processor, key):
            setattr(processor, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            architecture(dry_run, io), dtype=torch.float32
        )
    return model.eval(), io


def train_config(dry_run: bool, sizes: dict, lora: bool = False) -> Any:
    """The 3B recipe as the policy sees it: one on-policy optimizer step, hf rollout copy (with
    ``lora``: rank-64 adapters, rank 4 in a dry run, at lr 1e-5)."""
    from stages.config import apply_overrides, build, load_recipe, parse_override
    from stages.train import TrainConfig

    settings = {
        "model.name": "random-qwen2.5-vl-3b",
        "rollout.backend": "hf",
        "optim.mini_batches": 1,
        "optim.micro_batch": sizes["micro_batch"],
        "trainer.require_gpu": "false",
        "trainer.device": "cpu" if dry_run else "cuda",
    }
    if lora:
        settings.update({"model.lora.rank": 4 if dry_run else 64, "optim.lr": 1e-5})
    overrides = [parse_override(f"{k}={v}") for k, v in settings.items()]
    return build(TrainConfig, apply_overrides(load_recipe("qwen2_5_vl_3b"), overrides))


def synthetic_batch(io: Any, sizes: dict, width: int, seed: int) -> tuple[Any, dict]:
    """Image prompts in groups, responses of exactly ``width`` ordinary tokens, 0/1 rewards."""
    from PIL import Image

    from stages.train.samples import Group, StepBatch

    rng = random.Random(seed)
    banned = set(io.banned_token_ids) | set(io.stop_token_ids) | {io.pad_token_id}
    vocab = [i for i in range(len(io.tokenizer)) if i not in banned]
    rows, groups = {}, []
    for p in range(sizes["sequences"] // sizes["group"]):
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        picture = Image.new("RGB", (sizes["image"], sizes["image"]), colour)
        rows[f"p{p}"] = {"id": f"p{p}", "prompt": "<image>Find x.", "images": [picture]}
        n = sizes["group"]
        responses = [[rng.choice(vocab) for _ in range(width)] for _ in range(n)]
        rewards = [float(i % 2) for i in range(n)]  # every group has signal
        groups.append(Group(f"p{p}", responses, [[0.0] * width] * n, rewards, [{}] * n, [""] * n))
    return StepBatch(groups), rows


def flops(model: Any, batch: Any, rows: dict, io: Any, lora: bool = False) -> tuple[float, int]:
    """Model FLOPs of one forward + backward over ``batch`` (see the module docstring), and the
    number of tokens (prompt + response) it runs through. Under LoRA the frozen weights get no
    gradient (4 N T for the dense layers and the lm_head, not 6) and the frozen vision tower runs
    forward only (2 N T); the adapters themselves are not counted."""
    weights, vision_runs = (4, 2) if lora else (6, 6)
    text = model.config.text_config
    lm = model.model.language_model
    dense = sum(p.numel() for n, p in lm.named_parameters() if ".lora_" not in n)
    dense -= lm.embed_tokens.weight.numel()
    vision = sum(p.numel() for p in model.model.visual.parameters())
    total, tokens = 0.0, 0
    for group in batch.groups:
        encoded = io.encode([rows[group.prompt_id]])
        prompt = encoded.inputs["input_ids"].shape[1]
        patches = int(encoded.inputs["image_grid_thw"].prod())
        for response in group.response_ids:
            length = prompt + len(response)
            tokens += length
            total += weights * dense * length
            total += weights * text.vocab_size * text.hidden_size * len(response)
            total += 6 * text.num_hidden_layers * text.hidden_size * length**2
            total += vision_runs * vision * patches
    return total, tokens


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def changed_fractions(before: dict[str, torch.Tensor], policy: Any) -> tuple[float, float]:
    """(fraction of master weights that changed, fraction whose bf16 rounding changed)."""
    from stages.train.sharding import local

    changed = changed_bf16 = total = 0
    for name, param in policy.module.named_parameters():
        if name not in before:
            continue
        after = local(param).detach().cpu()
        changed += int((after != before[name]).sum())
        changed_bf16 += int((after.bfloat16() != before[name].bfloat16()).sum())
        total += after.numel()
    return changed / total, changed_bf16 / total


def check_update(args: argparse.Namespace, sizes: dict, device: torch.device) -> None:
    from stages.models.prompt_length import prompt_lengths
    from stages.train.policy import Policy
    from stages.train.sharding import local
    from stages.train.update import update

    log("building the random-weight Qwen2.5-VL-3B-architecture model")
    model, io = build(args.dry_run, device, sizes["image"])
    config = train_config(args.dry_run, sizes, args.lora)
    policy = Policy(config, loaded=(model, io))
    peak = peak_tflops(device, args.peak_tflops)
    log(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters; first update")
    before = {n: local(p).detach().cpu().clone() for n, p in model.named_parameters()}
    batch, rows = synthetic_batch(io, sizes, sizes["widths"][0], seed=0)
    update(policy, batch, rows, step=0)
    if args.lora:  # the adapters move, the base does not
        adapters = {n: v for n, v in before.items() if ".lora_" in n}
        base = {n: v for n, v in before.items() if ".lora_" not in n}
        emit({"check": "precision_lora", "lr": config.optim.lr,
              "adapters_changed_fraction": changed_fractions(adapters, policy)[0],
              "base_changed_fraction": changed_fractions(base, policy)[0]})  # fmt: skip
    else:
        changed, changed_bf16 = changed_fractions(before, policy)
        emit({"check": "precision", "lr": config.optim.lr, "changed_fraction": changed})
        emit({"check": "precision_if_bf16_weights", "changed_fraction": changed_bf16})
    del before
    for step, width in enumerate(sizes["widths"], start=1):
        batch, rows = synthetic_batch(io, sizes, width, seed=step)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        metrics = update(policy, batch, rows, step=step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        work, tokens = flops(model, batch, rows, io, args.lora)
        name = "update_lora" if args.lora else "update"
        record = {"check": name, "width": width, "sequences": batch.size, "seconds": seconds}
        record["tokens_per_s"] = tokens / seconds  # prompt + response tokens
        record["response_tokens_per_s"] = metrics["trainer_tokens_per_s"]
        record["mfu"] = work / seconds / (peak * 1e12) if peak else None
        if device.type == "cuda":
            record["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            record["reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        prompt_tokens = max(prompt_lengths(io, list(rows.values())))
        total = (
            torch.cuda.get_device_properties(device).total_memory
            if device.type == "cuda"
            else 80 * 2**30
        )
        record["plan_gib"] = plan_gib(config, width, prompt_tokens, total)
        emit(record)
    log("hf generate with the FSDP-sharded policy itself (lockstep path, bf16 compute)")
    engine = policy.hf_engine(sizes["sequences"])
    prompts = list(rows.values())
    started = time.perf_counter()
    samples = engine.generate(prompts, n=sizes["group"], max_new_tokens=sizes["generate_tokens"])
    seconds = time.perf_counter() - started
    tokens = sum(len(s.response_ids) for group in samples for s in group)
    emit({"check": "generate", "sequences": len(prompts) * sizes["group"], "tokens": tokens,
          "tokens_per_s": tokens / seconds})  # fmt: skip
    check_vllm(policy, io, prompts, sizes, device, hf_tokens_per_s=tokens / seconds)


def check_vllm(
    policy: Any, io: Any, prompts: list, sizes: dict, device: torch.device, hf_tokens_per_s: float
) -> None:
    """The vllm rollout engine as ``mgpo train`` runs it, on the same policy (module docstring)."""
    if device.type != "cuda":
        emit({"check": "vllm", "skipped": "the vLLM checks need a GPU"})
        return
    try:
        import vllm  # noqa: F401
    except ImportError:
        emit({"check": "vllm", "skipped": "vLLM is not installed"})
        return
    from stages.rollout.engine_vllm import VLLMEngine

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-vllm-"))
    policy.module.config.save_pretrained(folder)  # no weights: vLLM starts on dummy ones
    io.save_pretrained(folder)
    free, total = torch.cuda.mem_get_info(device)
    log(f"vLLM engine in this process ({free / 2**30:.1f} GiB free of {total / 2**30:.1f})")
    engine = VLLMEngine.create(
        str(folder),
        dtype="bfloat16",
        max_model_len=4096,
        gpu_memory_utilization=round(free / total - 0.05, 2),
        colocate_with_trainer=True,
        load_format="dummy",
    )
    where = engine.llm.collective_rpc(lambda worker: str(worker.device))[0]
    emit(
        {"check": "vllm_device", "engine": where, "process": f"cuda:{torch.cuda.current_device()}"}
    )
    syncs = {}
    for state in ("awake", "after_sleep"):
        if state == "after_sleep":
            before = torch.cuda.mem_get_info(device)[0]
            engine.sleep()
            freed = (torch.cuda.mem_get_info(device)[0] - before) / 2**30
            emit({"check": "vllm_sleep", "freed_gib": freed, "can_sleep": engine.can_sleep})
        torch.cuda.synchronize()
        started = time.perf_counter()
        policy.sync_rollout(engine)
        torch.cuda.synchronize()
        syncs[state] = time.perf_counter() - started
    emit({"check": "vllm_weight_sync", **{f"{k}_s": v for k, v in syncs.items()}})
    started = time.perf_counter()
    samples = engine.generate(prompts, n=sizes["group"], max_new_tokens=sizes["generate_tokens"])
    seconds = time.perf_counter() - started
    tokens = sum(len(s.response_ids) for group in samples for s in group)
    emit({"check": "vllm_generate", "tokens": tokens, "tokens_per_s": tokens / seconds,
          "vllm_over_hf": tokens / seconds / hf_tokens_per_s})  # fmt: skip
    engine.close()


def check_tiny_recipe(args: argparse.Namespace, sizes: dict) -> None:
    from stages.config import apply_overrides, build, load_recipe, parse_override
    from stages.prepare import PrepareOptions, run_prepare
    from stages.train import TrainConfig, run_train

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        root = Path(folder)
        for split in ("train", "validation"):
            out = str(root / split)
            run_prepare(PrepareOptions("shapes", split=split, difficulty="colour", out=out))
        steps = sizes["tiny_steps"]
        settings = {
            "data.train": root / "train",
            "data.val": root / "validation",
            "run_dir": root / "run",
            "trainer.steps": steps,
            "trainer.val_every": steps,
            "trainer.save_every": 0,
            "trainer.device": "cpu" if args.dry_run else "cuda",
        }
        if args.dry_run:
            settings.update({"rollout.batch_prompts": 4, "rollout.n": 4, "data.val_limit": 8})
        overrides = [parse_override(f"{k}={v}") for k, v in settings.items()]
        config = build(TrainConfig, apply_overrides(load_recipe("tiny"), overrides))
        log(f"tiny recipe, {steps} steps")
        started = time.perf_counter()
        run = run_train(config)
        minutes = (time.perf_counter() - started) / 60
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    emit({"check": "tiny_recipe", "steps": steps, "val_accuracy": last.get("val_accuracy"),
          "minutes": minutes})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's bf16 peak, for the MFU")
    parser.add_argument("--skip-tiny", action="store_true", help="no tiny-recipe training")
    parser.add_argument("--lora", action="store_true", help="the update checks with LoRA")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --dry-run to run the toy sizes on a CPU)")
    sizes = TOY if args.dry_run else FULL
    device = torch.device("cpu" if args.dry_run else "cuda")
    started = time.perf_counter()
    check_update(args, sizes, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_tiny:
        check_tiny_recipe(args, sizes)
    log(f"done in {(time.perf_counter() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
