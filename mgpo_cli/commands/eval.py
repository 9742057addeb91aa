"""``mgpo eval BENCH --model M [--model M2 ...]``: benchmark predictions, scores and one table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from stages.console import Console


def _list_benchmarks() -> None:
    from stages.eval import BENCHMARKS, SUITE

    table = Table(title="benchmarks for mgpo eval ('all' runs the paper's suite: *)")
    for column in ("name", "dataset", "splits (default first)", "subsets", "scoring"):
        table.add_column(column, overflow="fold")
    for name, bench in BENCHMARKS.items():
        splits = [bench.default_split, *(s for s in bench.splits if s != bench.default_split)]
        table.add_row(
            f"{name}{' *' if name in SUITE else ''}",
            bench.hub_id,
            ", ".join(f"{s} ({bench.splits[s]})" for s in splits),
            ", ".join(bench.subsets) or "-",
            bench.notes,
        )
    Console().print(table)


def evaluate(
    bench: str = typer.Argument(
        None, help="Benchmark (see --list), or 'all' for the paper's suite.", show_default=False
    ),
    model: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="Policy to evaluate, repeatable: hub id, model folder, run directory (its final "
        "policy), checkpoint folder, or 'tiny'.",
    ),
    backend: str = typer.Option("hf", help="Engine: hf (transformers, any device) or vllm (GPU)."),
    split: str = typer.Option(None, help="Benchmark split.  \\[default: the benchmark's own]"),
    subset: str = typer.Option(
        None, help="Benchmark subset, e.g. mathverse vision_only, shapes medium."
    ),
    query: str = typer.Option(
        None, help="Query variant (mathverse: cot or wo; geometry3k: standard or choices)."
    ),
    limit: int = typer.Option(
        None, help="Only the first K items of each benchmark (wemath: K composite problems)."
    ),
    source: Path = typer.Option(
        None,
        help="Local copy instead of the hub: a downloaded hub snapshot folder (its README "
        "configs pick the files) or parquet/json/jsonl files in the hub's columns; with 'all', "
        "a folder holding one folder per benchmark.",
    ),
    out: Path = typer.Option(
        Path("evals"), help="Results folder: OUT/MODEL_TAG/BENCH/SPLIT[-SUBSET]/..."
    ),
    judge: str = typer.Option(
        None,
        help="OpenAI-compatible server asked for the answer when rules find none "
        "(e.g. http://127.0.0.1:8000).",
    ),
    judge_model: str = typer.Option(
        None, help="Model name on the judge server.  \\[default: the first it lists]"
    ),
    workers: int = typer.Option(4, help="Scoring processes."),
    timeout: float = typer.Option(10.0, help="Seconds one item may take to score (then: wrong)."),
    max_new_tokens: int = typer.Option(
        None, help="Longest response in tokens.  \\[default: 2048; arithmetic: 24]"
    ),
    batch_size: int = typer.Option(16, help="Sequences per generate call."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0: greedy)."),
    n: int = typer.Option(1, "-n", "--n", help="Responses per item (needs --temperature > 0)."),
    min_pixels: int = typer.Option(
        None, help="Upscale smaller images.  \\[default: 262144; shapes: none]"
    ),
    max_pixels: int = typer.Option(
        None, help="Downscale larger images.  \\[default: 4194304; shapes: none]"
    ),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, bfloat16, float16."),
    device: str = typer.Option("auto", help="Device for the hf backend: auto, cpu, cuda."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo results evaluated before (with any settings)."
    ),
    details: bool = typer.Option(
        False, "--details", help="Also print every benchmark's breakdown tables."
    ),
    list_: bool = typer.Option(False, "--list", help="List the benchmarks, then exit."),
) -> None:
    """Evaluate models on benchmarks; prints one results table, models side by side.

    Greedy decoding by default. Results: OUT/MODEL_TAG/BENCH/SPLIT[-SUBSET]/ prompts, rollouts,
    predictions, summary.json.

    A rerun with the same settings reuses finished work (a killed run resumes where it stopped).
    Under accelerate launch / torchrun every process generates and scores its share of the
    items (one engine per GPU); the results and the summary are those of one process.
    """
    if list_:
        _list_benchmarks()
        return
    from stages.errors import MgpoError
    from stages.eval import EvalOptions, render, run_eval
    from stages.processes import processes

    if bench is None:
        raise MgpoError("missing BENCH (see mgpo eval --list, or 'all' for the paper's suite)")
    options = EvalOptions(
        bench=bench,
        models=tuple(model),
        backend=backend,
        split=split,
        subset=subset,
        query=query,
        limit=limit,
        source=str(source) if source else None,
        out=str(out),
        judge=judge,
        judge_model=judge_model,
        workers=workers,
        timeout_s=timeout,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        n=n,
        temperature=temperature,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        dtype=dtype,
        device=device,
        overwrite=overwrite,
    )
    summaries = run_eval(options)
    if not processes().is_main:  # under a launcher, the main process reports
        return
    render(Console(), summaries, details=details)
    Console(stderr=True).print(f"[green]results in {out}/[/]")
