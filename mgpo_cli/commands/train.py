"""``mgpo train``: the on-policy RL loop (rollout -> score -> update), configured by a recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.console import Console

DEFAULT_RECIPE = "qwen2_5_vl_3b"


def _list_algorithms() -> None:
    """Every registered loss: formula, paper, and its options (recipe keys ``algo.KEY``) with
    their defaults; plain lines, so the listing reads the same in a pipe or a narrow terminal."""
    from stages.train import algorithm_catalog

    typer.echo("losses for mgpo train --algo NAME; set an option with --set algo.KEY=VALUE")
    for entry in algorithm_catalog():
        options = ", ".join(f"{k}={v}" for k, v in entry["options"].items())
        typer.echo(f"\n{entry['name']}\n  loss:    {entry['formula']}")
        typer.echo(f"  paper:   {entry['paper']}\n  options: {options}")


def _alpha(value: str | None) -> float | str | None:
    if value is None or value == "dyn":
        return value
    try:
        return float(value)
    except ValueError:
        from stages.errors import MgpoError

        raise MgpoError(f"--alpha {value}: expected a number in [0, 1] or 'dyn'") from None


def train(
    recipe: str = typer.Option(
        DEFAULT_RECIPE,
        help="Built-in recipe name (tiny, qwen2_5_vl_3b, qwen2_5_vl_7b, smollm2_arithmetic,"
        " smollm2_arithmetic_lora) or a YAML file. LoRA: --set model.lora.rank=16 (see README).",
    ),
    algo: str = typer.Option(
        None,
        help="Algorithm: grpo, gspo, mgpo, dapo, dr_grpo, gpg, sapo, cispo or gmpo (see --list-algos).  \\[recipe: algo.name]",
    ),
    alpha: str = typer.Option(
        None,
        help="MGPO token-ratio weight on selected tokens: a number in [0, 1] or 'dyn'.  \\[recipe: algo.alpha]",
    ),
    beta: float = typer.Option(
        None,
        help="MGPO: fraction of the most uncertain tokens that are blended.  \\[recipe: algo.beta]",
    ),
    model: str = typer.Option(
        None,
        help="Policy: hub id, local folder (a LoRA adapter folder: its base with the adapter"
        " merged), or 'tiny'.  \\[recipe: model.name]",
    ),
    data: Path = typer.Option(None, help="Training prompt shards.  \\[recipe: data.train]"),
    val_data: Path = typer.Option(
        None, "--val-data", help="Held-out prompt shards for validation.  \\[recipe: data.val]"
    ),
    run_dir: Path = typer.Option(None, help="Run directory.  \\[recipe: run_dir]"),
    steps: int = typer.Option(None, help="Training steps.  \\[recipe: trainer.steps]"),
    seed: int = typer.Option(
        None, help="Seed for data order, sampling and updates.  \\[recipe: trainer.seed]"
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override any recipe key, e.g. --set rollout.n=8 --set optim.lr=1e-6 (repeatable).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir from its last checkpoint."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Delete an existing run in --run-dir and start again."
    ),
    show_config: bool = typer.Option(
        False, "--show-config", help="Print the resolved config and exit."
    ),
    plan: bool = typer.Option(
        False,
        "--plan",
        help="Print the memory plan (bytes per GPU of each item, total, fits or not) and exit;"
        " loads no weights. Hardware: --gpus/--gpu-memory, else the GPUs this process runs on"
        " (WORLD_SIZE processes, this device's memory), else the recipe's plan.gpus x"
        " plan.gpu_memory_gib.",
    ),
    gpus: int = typer.Option(
        None, "--gpus", min=1, help="With --plan: plan for this many GPUs (one process each)."
    ),
    gpu_memory: float = typer.Option(
        None, "--gpu-memory", min=0.001, help="With --plan: memory of each GPU, in GiB."
    ),
    list_algos: bool = typer.Option(
        False,
        "--list-algos",
        help="List every loss with its options, defaults, formula and paper, and exit.",
    ),
) -> None:
    """Train a policy with GRPO, GSPO, MGPO, DAPO, Dr.GRPO, GPG, SAPO, CISPO or GMPO.

    Without --recipe this uses the paper's Qwen2.5-VL-3B setting on prepared Geometry3K shards
    (GPU); on a CPU use --recipe tiny with the built-in shapes task.

    Before loading anything, a run on GPUs checks the memory plan (see --plan) and stops with one
    line naming the largest item and the recipe key to change when it does not fit
    (plan.check: auto = on GPUs only, always = also on CPU against plan.gpus x
    plan.gpu_memory_gib, never = do not check).
    """
    if list_algos:
        _list_algorithms()
        return
    import json

    from stages.config import apply_overrides, build, load_recipe, parse_override, to_dict
    from stages.train import TrainConfig

    data_dict = load_recipe(recipe)
    overrides = [parse_override(text) for text in set_]
    flags = {
        "algo.name": algo,
        "algo.alpha": _alpha(alpha),
        "algo.beta": beta,
        "model.name": model,
        "data.train": str(data) if data else None,
        "data.val": str(val_data) if val_data else None,
        "run_dir": str(run_dir) if run_dir else None,
        "trainer.steps": steps,
        "trainer.seed": seed,
    }
    overrides += [(key.split("."), value) for key, value in flags.items() if value is not None]
    config = build(TrainConfig, apply_overrides(data_dict, overrides))
    if show_config:
        typer.echo(json.dumps(to_dict(config), indent=2, default=str))
        return
    if plan:
        from stages.train import plan_hardware, plan_memory, plan_table

        hardware = plan_hardware(config, gpus=gpus, gpu_memory_gib=gpu_memory)
        found = plan_memory(config, processes=hardware.processes, gpu_bytes=hardware.gpu_bytes)
        typer.echo(plan_table(found, config, hardware.source))
        return
    if gpus is not None or gpu_memory is not None:
        from stages.errors import MgpoError

        raise MgpoError(
            "--gpus and --gpu-memory describe the hardware of --plan; a run uses its own"
        )
    from stages.train import run_train

    out = run_train(config, resume=resume, overwrite=overwrite)
    Console().print(f"[green]run written to {out}[/] (final policy: {out / 'final'})")
