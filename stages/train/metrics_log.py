"""Where step metrics go: ``metrics.jsonl`` (always), TensorBoard (when installed), W&B (when asked)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from stages.train.samples import Group, StepBatch


def step_metrics(rolled: list[Group], batch: StepBatch) -> dict[str, float]:
    """Reward, accuracy, format and length statistics of everything rolled out this step."""
    rewards = [r for g in rolled for r in g.rewards]
    lengths = [len(ids) for g in rolled for ids in g.response_ids]
    finishes = [f for g in rolled for f in g.finish_reasons]
    out = {
        "reward_mean": statistics.fmean(rewards) if rewards else 0.0,
        "reward_std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
        "response_length_mean": statistics.fmean(lengths) if lengths else 0.0,
        "response_length_max": float(max(lengths, default=0)),
        "response_clipped_frac": finishes.count("length") / max(len(finishes), 1),
        "zero_advantage_group_frac": sum(g.degenerate for g in rolled) / max(len(rolled), 1),
        "groups_trained": float(len(batch.groups)),
        "samples_trained": float(batch.size),
    }
    for component in ("accuracy", "format"):
        values = [
            s[component]
            for g in rolled
            for s in g.scores
            if component in s and s[component] is not None
        ]
        if values:
            out[component] = statistics.fmean(float(v) for v in values)
    timed_out = [bool(s.get("timed_out")) for g in rolled for s in g.scores]
    out["score_timeouts"] = float(sum(timed_out))
    out["score_non_finite"] = float(
        sum(bool(s.get("non_finite")) for g in rolled for s in g.scores)
    )
    return out


class MetricsLog:
    def __init__(
        self, run_dir: Path, *, enabled: bool, wandb: bool, config: dict[str, Any]
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tensorboard = None
        self.wandb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass
        if wandb:
            try:
                import wandb as wandb_module

                self.wandb = wandb_module.init(
                    project="mgpo", dir=str(run_dir), config=config, resume="allow"
                )
            except ImportError:
                from stages.errors import MgpoError

                raise MgpoError(
                    "trainer.wandb is on but wandb is not installed (pip install wandb)"
                ) from None

    def truncate_after(self, step: int) -> None:
        """Drop the lines of steps a resumed run will redo (all of them with ``step`` -1, a run
        killed before its first checkpoint), and a line torn by the kill; replaced atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a half-written last line
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, int | float):
                    self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
