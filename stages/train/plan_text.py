"""The memory plan as the plain-text table ``mgpo train --plan`` prints (and the README shows)."""

from __future__ import annotations

from stages.train.config import TrainConfig
from stages.train.memory_plan import GIB, HELD, ROLLOUT, UPDATE, MemoryPlan

NAME_WIDTH = 42


def human_bytes(n: int) -> str:
    """Bytes in the largest binary unit that keeps at least one whole unit (3 significant)."""
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n:,}"


def _row(name: str, when: str, size: str, key: str) -> str:
    return f"  {name:<{NAME_WIDTH}} {when:<15} {size:>11}   {key}"


def plan_table(plan: MemoryPlan, config: TrainConfig, source: str) -> str:
    """The plan's header (model, hardware, micro-batch), one row per item, the total and verdict."""
    r = config.rollout
    image = f" (image up to {plan.image_tokens:,})" if plan.image_tokens else ""
    gpus = f"{plan.processes} GPU{'s' if plan.processes > 1 else ''}"
    checkpointing = "on" if config.model.gradient_checkpointing else "off"
    lines = [
        f"memory plan: {plan.model}, {_count(plan.parameters)} parameters"
        f" ({_count(plan.trainable)} trainable), {plan.strategy} on {gpus} of"
        f" {human_bytes(plan.gpu_bytes)}",
        f"  hardware: {source}",
        f"  update: micro-batch {config.optim.micro_batch} rows x"
        f" {r.max_prompt_tokens + r.max_new_tokens:,} tokens = {r.max_prompt_tokens:,} prompt"
        f"{image} + {r.max_new_tokens:,} response",
        f"  compute: {config.model.dtype}, gradient checkpointing {checkpointing};"
        f" rollout: {r.backend}",
        "",
        _row("item", "when", "per GPU", "to lower it, change"),
    ]
    for item in plan.items:
        name = f"{item.name}{' ~' if item.estimate else ''}"
        lines.append(_row(name, ", ".join(item.phases), human_bytes(item.bytes), item.key or "-"))
    held, update, rollout = (plan.phase_bytes(p) for p in (HELD, UPDATE, ROLLOUT))
    lines.append(
        _row("total = always + max(update, rollout)", "", human_bytes(plan.total), "")
        + f"({human_bytes(held)} + max({human_bytes(update)}, {human_bytes(rollout)}))"
    )
    free = plan.gpu_bytes - plan.total
    verdict = (
        f"fits in {human_bytes(plan.gpu_bytes)} per GPU ({human_bytes(free)} to spare)"
        if plan.fits
        else f"does NOT fit in {human_bytes(plan.gpu_bytes)} per GPU"
        f" ({human_bytes(-free)} over); largest item: {plan.largest.name},"
        f" change {plan.largest.key or 'the GPUs'}"
    )
    lines += ["", f"  {verdict}"]
    for item in plan.aside:
        lines.append(f"  not counted: {item.name} would be {human_bytes(item.bytes)}")
    if r.backend == "vllm":
        share = (
            "what the held items leave (rollout.gpu_memory_utilization: auto, at most 0.95)"
            if r.gpu_memory_utilization == "auto"
            else "rollout.gpu_memory_utilization"
        )
        lines.append(
            "  the vllm engine sleeps during the update (weights and KV cache freed), so its share"
            f" counts in the rollout only; its share: {share}"
        )
    lines.append(
        "  ~ estimate; every row of a micro-batch at full length. Formulas:"
        " stages/train/memory_plan.py"
    )
    return "\n".join(lines)
