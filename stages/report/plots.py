"""One figure per quantity, every run overlaid; each figure comes back with the data it plots.

Figures are drawn with matplotlib's Agg backend (no display needed) and returned as PNG bytes
together with the exact series drawn, so callers (and tests) can check what a plot shows.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

from stages.errors import MgpoError
from stages.report.runs import Run, series, tokens_axis

INSTALL_HINT = "matplotlib is not installed (needed for plots): pip install 'mgpo[report]'"


@dataclass(frozen=True)
class Quantity:
    """A plotted quantity: its metric keys (one line per key per run) and axis text."""

    title: str
    keys: tuple[str, ...]
    ylabel: str


# Name (also the PNG file stem) -> quantity, in the order the report shows them.
QUANTITIES: dict[str, Quantity] = {
    "reward": Quantity("Reward (mean over rollouts)", ("reward_mean",), "reward"),
    "accuracy": Quantity("Training accuracy", ("accuracy",), "accuracy"),
    "val_accuracy": Quantity("Validation accuracy (greedy)", ("val_accuracy",), "accuracy"),
    "val_reward": Quantity("Validation reward (greedy)", ("val_reward",), "reward"),
    "response_length": Quantity(
        "Response length (mean tokens)", ("response_length_mean",), "tokens"
    ),
    "entropy": Quantity("Policy entropy (mean over tokens)", ("entropy",), "nats"),
    "ratio_spread": Quantity(
        "Importance-weight spread (max - min over valid tokens)", ("ratio_spread",), "max - min"
    ),
    "clip_frac": Quantity(
        "Clipped token fractions (solid: high, dashed: low)",
        ("clip_frac_high", "clip_frac_low"),
        "fraction of tokens",
    ),
    "blend_frac": Quantity("Fraction of tokens blended (MGPO)", ("blend_frac",), "fraction"),
    "step_time": Quantity("Step time", ("step_time_s",), "seconds"),
}
X_LABELS = {
    "step": "training step",
    "tokens": "response tokens trained (cumulative: samples x mean length)",
}
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass
class Series:
    """One drawn line of run ``run``: ``y`` is what is drawn (smoothed), ``raw`` as logged."""

    run: str
    label: str
    key: str
    x: list[float]
    y: list[float]
    raw: list[float]


@dataclass
class Plot:
    name: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    png: bytes = b""


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start); NaNs are left out."""
    if window < 1:
        raise ValueError("window must be >= 1")
    out = []
    for i in range(len(values)):
        kept = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(kept) / len(kept) if kept else math.nan)
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MgpoError(INSTALL_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def require_matplotlib() -> None:
    """Fail early, before any run is read, when plots cannot be drawn."""
    _pyplot()


def collect(name: str, runs: list[Run], x: str, smooth: int) -> Plot:
    """The series of one quantity over all runs (runs that never log it are left out)."""
    quantity = QUANTITIES[name]
    plot = Plot(name, quantity.title, X_LABELS[x], quantity.ylabel)
    for run in runs:
        for key in quantity.keys:
            xs, ys = series(run, key, x)
            if not xs:
                continue
            label = run.label if len(quantity.keys) == 1 else f"{run.label} {key.split('_')[-1]}"
            plot.series.append(Series(run.label, label, key, xs, moving_average(ys, smooth), ys))
    return plot


def draw(plot: Plot, runs: list[Run], smooth: int) -> bytes:
    """PNG of ``plot``: one colour per run, one line style per key."""
    plt = _pyplot()
    quantity = QUANTITIES[plot.name]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {run.label: colours[i % len(colours)] for i, run in enumerate(runs)}
    figure, axes = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    try:
        for line in plot.series:
            style = LINE_STYLES[quantity.keys.index(line.key) % len(LINE_STYLES)]
            colour = colour_of[line.run]
            marker = "o" if len(line.x) <= 20 else None
            if smooth > 1:
                axes.plot(line.x, line.raw, style, color=colour, alpha=0.25, linewidth=1)
            axes.plot(line.x, line.y, style, color=colour, label=line.label, marker=marker, ms=3)
        title = plot.title + (f" (moving average over {smooth})" if smooth > 1 else "")
        axes.set_title(title, fontsize=11)
        axes.set_xlabel(plot.xlabel)
        axes.set_ylabel(plot.ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="best")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def make_plots(runs: list[Run], x: str, smooth: int) -> tuple[list[Plot], list[str]]:
    """Every quantity some run logs, drawn; notes on runs left out."""
    notes: list[str] = []
    if x == "tokens":
        for run in runs:
            if tokens_axis(run.rows) is None:
                notes.append(
                    f"{run.path}: samples_trained or response_length_mean missing on a training "
                    "line, left out of the plots (--x tokens)"
                )
    plots = []
    for name in QUANTITIES:
        plot = collect(name, runs, x, smooth)
        if not plot.series:  # e.g. blend_frac without an MGPO run: not a problem
            continue
        plot.png = draw(plot, runs, smooth)
        plots.append(plot)
    return plots, notes
