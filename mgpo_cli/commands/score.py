"""``mgpo score``: rewards for rollout shards."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.console import Console


def score(
    rollouts: Path = typer.Option(..., help="Rollout shard directory (from mgpo rollout)."),
    prompts: Path = typer.Option(
        None,
        help="Prompt shards with the answers.  \\[default: the ones the rollouts were made from]",
    ),
    reward: str = typer.Option(
        "math",
        help="Reward: math (think/boxed format + math-verify accuracy), short_answer (one-word answers), or FILE.py:FUNCTION.",
    ),
    workers: int = typer.Option(1, help="Scoring processes."),
    timeout: float = typer.Option(
        5.0, help="Hard time limit per item in seconds; an item past it scores 0 and is counted."
    ),
    format_weight: float = typer.Option(
        None,
        help="Weight of the format component: reward = (1 - w) accuracy + w format.  \\[default: the reward's, 0.1]",
    ),
    out: Path = typer.Option(
        None, help="Output shard directory.  \\[default: NAME-scores beside the rollouts]"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a complete score set at --out."
    ),
) -> None:
    """Score rollouts: reward, its components (format, accuracy, ...) and the answer read."""
    from stages.processes import processes
    from stages.score import ScoreOptions, run_score

    summary = run_score(
        ScoreOptions(
            rollouts=str(rollouts),
            prompts=str(prompts) if prompts else None,
            reward=reward,
            workers=workers,
            timeout_s=timeout,
            format_weight=format_weight,
            out=str(out) if out else None,
            overwrite=overwrite,
        )
    )
    if not processes().is_main:
        return
    Console().print(
        f"[green]scores written to {summary.path}[/]: {summary.items} items, mean reward {summary.reward_mean:.4f}"
        + (f", {summary.timed_out} timed out" if summary.timed_out else "")
        + (f", {summary.non_finite} non-finite" if summary.non_finite else "")
    )
