"""The live view of a training run: one progress bar with the numbers people watch."""

from __future__ import annotations

from rich.progress import TextColumn

from stages.console import progress


class LiveView:
    def __init__(self, total: int, *, start: int, enabled: bool) -> None:
        self.bar = progress(TextColumn("{task.fields[numbers]}"))
        self.task = self.bar.add_task(
            "train", total=total, completed=start, numbers="", visible=enabled
        )
        self.enabled = enabled

    def update(self, step: int, metrics: dict[str, float]) -> None:
        parts = [f"reward {metrics.get('reward_mean', 0):.3f}"]
        if "accuracy" in metrics:
            parts.append(f"acc {metrics['accuracy']:.3f}")
        if "val_accuracy" in metrics:
            parts.append(f"val {metrics['val_accuracy']:.3f}")
        parts.append(f"len {metrics.get('response_length_mean', 0):.1f}")
        parts.append(f"{metrics.get('step_time_s', 0):.1f}s/step")
        self.bar.update(self.task, completed=step, numbers=" ".join(parts))
        if self.enabled and not self.bar.console.is_terminal:
            self.bar.console.print(f"step {step}: " + " ".join(parts))

    def __enter__(self) -> LiveView:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
