"""`mgpo report`: figures and tables checked against the metrics they come from, the HTML page in
headless Chromium, broken run directories, and one real 2-step tiny run to prove the format.

Most runs here are written by hand in the exact format ``mgpo train`` writes (the resolved tiny
config, metric lines with the keys of a real run, eval summaries as ``mgpo eval`` writes them),
because a real run costs seconds per step; ``test_real_tiny_run`` trains one for real.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import assert_user_error, run_cli, run_main
from stages.report import ReportOptions, run_report
from stages.report.plots import QUANTITIES, moving_average

CHROMIUM = Path("/usr/bin/chromium")
# Every key of a real tiny MGPO training line (copied from a run's metrics.jsonl), in its order.
TRAIN_KEYS = [
    "reward_mean",
    "reward_std",
    "response_length_mean",
    "response_length_max",
    "response_clipped_frac",
    "zero_advantage_group_frac",
    "groups_trained",
    "samples_trained",
    "accuracy",
    "format",
    "score_timeouts",
    "rollout_s",
    "score_s",
    "rollout_rounds",
    "loss",
    "pg_loss",
    "tokens",
    "entropy",
    "clip_frac_high",
    "clip_frac_low",
    "ratio_mean",
    "ratio_max",
    "ratio_min",
    "ratio_spread",
    "blend_frac",
    "alpha_mean",
    "logprobs_s",
    "update_s",
    "grad_norm",
    "engine_logprob_mismatch",
    "lr",
    "trainer_tokens_per_s",
    "step_time_s",
]
MGPO_ONLY = {"blend_frac", "alpha_mean"}


def resolved_config(algo: str, alpha: float | str, beta: float, run_dir: str) -> dict:
    """What ``mgpo train --recipe tiny --algo ALGO ...`` saves as RUN/config.json."""
    from stages.config import build, load_recipe, to_dict
    from stages.train.config import TrainConfig

    data = load_recipe("tiny")
    data["algo"].update(name=algo, alpha=alpha, beta=beta)
    data["run_dir"] = run_dir
    return json.loads(json.dumps(to_dict(build(TrainConfig, data)), default=str))


def metric_lines(algo: str, steps: int, seed: int, val_every: int = 2) -> list[dict]:
    """Metric lines as the loop writes them: a step-0 validation line, then one per step."""
    rng = random.Random(seed)
    lines = [{"step": 0, "val_reward": 0.0, "val_accuracy": 0.0}]
    for step in range(1, steps + 1):
        line: dict = {"step": step}
        for key in TRAIN_KEYS:
            if key in MGPO_ONLY and algo != "mgpo":
                continue
            line[key] = round(rng.uniform(0.0, 1.0), 6)
        line["samples_trained"] = 16.0
        line["response_length_mean"] = float(rng.randint(1, 9))
        line["ratio_spread"] = line["ratio_max"] - line["ratio_min"]
        if step % val_every == 0:
            line["val_reward"] = round(rng.uniform(0, 1), 6)
            line["val_accuracy"] = round(rng.uniform(0, 1), 6)
        lines.append(line)
    return lines


def summary(bench: str, accuracy: float, model: str) -> dict:
    """A ``summary.json`` in the shape ``mgpo eval`` writes it."""
    total = 100
    return {
        "bench": bench,
        "correct": round(accuracy * total),
        "total": total,
        "accuracy": accuracy,
        "headline": {"accuracy": accuracy},
        "breakdowns": {},
        "via": {"rule": total},
        "model": model,
        "model_spec": f"runs/{model}",
        "settings": {"bench": bench, "split": "test", "model": model},
    }


def write_run(
    root: Path,
    name: str,
    algo: str,
    alpha: float | str = 0.5,
    beta: float = 0.5,
    steps: int = 6,
    seed: int = 0,
    evals: dict[str, float] | None = None,
) -> tuple[Path, list[dict]]:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps(resolved_config(algo, alpha, beta, str(run)), indent=2)
    )
    lines = metric_lines(algo, steps, seed)
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "steps" / "step-000001").mkdir(parents=True)
    for bench, accuracy in (evals or {}).items():
        folder = run / "eval" / name / bench
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary(bench, accuracy, name), indent=2))
    return run, lines


def values(lines: list[dict], key: str) -> tuple[list[float], list[float]]:
    found = [(float(line["step"]), float(line[key])) for line in lines if key in line]
    return [s for s, _ in found], [v for _, v in found]


def markdown_rows(text: str, section: str) -> list[list[str]]:
    block = text.split(f"## {section}")[1].split("##")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


@pytest.fixture()
def two_runs(tmp_path: Path) -> dict[str, tuple[Path, list[dict]]]:
    return {
        "mgpo": write_run(
            tmp_path,
            "mgpo-dyn",
            "mgpo",
            "dyn",
            0.5,
            seed=1,
            evals={"geometry3k": 0.45, "mathvista": 0.6},
        ),
        "grpo": write_run(
            tmp_path, "grpo", "grpo", seed=2, evals={"geometry3k": 0.40, "mathvista": 0.7}
        ),
    }


# ----------------------------------------------------------------------------- pure pieces


def test_moving_average_is_a_trailing_mean_without_nans() -> None:
    data = [1.0, 2.0, math.nan, 4.0, 8.0]
    assert moving_average(data, 1)[:2] == [1.0, 2.0] and math.isnan(moving_average(data, 1)[2])
    assert moving_average(data, 2) == [1.0, 1.5, 2.0, 4.0, 6.0]
    assert moving_average(data, 3) == [1.0, 1.5, 1.5, 3.0, 6.0]
    assert moving_average([], 3) == []


# ----------------------------------------------------------------------------- figures, tables


def test_series_and_tables_match_the_metrics(tmp_path: Path, two_runs) -> None:
    (mgpo, mgpo_lines), (grpo, grpo_lines) = two_runs["mgpo"], two_runs["grpo"]
    report = run_report(ReportOptions(runs=(str(mgpo), str(grpo)), out=str(tmp_path / "rep")))
    assert report.problems == []
    assert [run.label for run in report.runs] == ["mgpo α=dyn β=0.5", "grpo"]
    assert [plot.name for plot in report.plots] == list(QUANTITIES)
    by_name = {plot.name: plot for plot in report.plots}
    lines_of = {"mgpo α=dyn β=0.5": mgpo_lines, "grpo": grpo_lines}
    for plot in report.plots:
        expected = [
            (label, key)
            for label, lines in lines_of.items()
            for key in QUANTITIES[plot.name].keys
            if any(key in line for line in lines)
        ]
        assert [(s.run, s.key) for s in plot.series] == expected, plot.name
        for line in plot.series:
            xs, ys = values(lines_of[line.run], line.key)
            assert line.x == xs and line.raw == ys and line.y == ys, (plot.name, line.label)
        png = tmp_path / "rep" / "plots" / f"{plot.name}.png"
        assert png.read_bytes() == plot.png
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (750, 420)
    # The MGPO-only quantity shows only the MGPO run; validation includes the step-0 line.
    assert [s.run for s in by_name["blend_frac"].series] == ["mgpo α=dyn β=0.5"]
    assert by_name["val_accuracy"].series[0].x == [0.0, 2.0, 4.0, 6.0]
    assert [s.label for s in by_name["clip_frac"].series][:2] == [
        "mgpo α=dyn β=0.5 high",
        "mgpo α=dyn β=0.5 low",
    ]

    text = (tmp_path / "rep" / "results.md").read_text()
    rows = {row[0]: row for row in markdown_rows(text, "Training")}
    for label, lines in lines_of.items():
        last = lines[-1]
        row = rows[label]
        assert row[1] == "6"
        assert row[2] == f"{last['reward_mean']:.3f}" and row[3] == f"{last['accuracy']:.3f}"
        assert row[4] == f"{last['val_accuracy']:.3f}"
        best = max(
            (line["val_accuracy"], -line["step"]) for line in lines if "val_accuracy" in line
        )
        assert row[5] == f"{best[0]:.3f} @{-best[1]}"
        assert row[6] == f"{last['response_length_mean']:.1f}"
        steps = [line["step_time_s"] for line in lines if "step_time_s" in line]
        assert row[9] == f"{sum(steps) / len(steps):.2f}"
    # Table 1: runs x benchmarks (percent), average, best of each column in bold.
    evaluation = markdown_rows(text, "Evaluation")
    assert evaluation == [
        ["mgpo α=dyn β=0.5", "**45.0**", "60.0", "52.5"],
        ["grpo", "40.0", "**70.0**", "**55.0**"],
    ]
    assert "| run | geometry3k | mathvista | avg |" in text


def test_smoothing_and_the_tokens_axis(tmp_path: Path, two_runs) -> None:
    mgpo, lines = two_runs["mgpo"]
    report = run_report(
        ReportOptions(runs=(str(mgpo),), out=str(tmp_path / "rep"), smooth=3, x="tokens")
    )
    reward = next(p for p in report.plots if p.name == "reward").series[0]
    # Independent formulas: cumulative samples x mean length; trailing mean of 3.
    cumulative, total = [], 0.0
    for line in lines:
        total += line.get("samples_trained", 0.0) * line.get("response_length_mean", 0.0)
        cumulative.append(total)
    assert reward.x == [
        c for c, line in zip(cumulative, lines, strict=True) if "reward_mean" in line
    ]
    raw = [line["reward_mean"] for line in lines if "reward_mean" in line]
    assert reward.raw == raw
    for i, y in enumerate(reward.y):
        window = raw[max(0, i - 2) : i + 1]
        assert y == pytest.approx(sum(window) / len(window))
    val = next(p for p in report.plots if p.name == "val_accuracy").series[0]
    assert val.x[0] == 0.0 and val.x[1:] == [cumulative[2], cumulative[4], cumulative[6]]
    # A run whose lines lack the token counts is left out of a tokens plot, and said so.
    grpo, _ = two_runs["grpo"]
    text = (grpo / "metrics.jsonl").read_text().replace('"samples_trained": 16.0, ', "", 1)
    (grpo / "metrics.jsonl").write_text(text)
    report = run_report(
        ReportOptions(
            runs=(str(mgpo), str(grpo)), out=str(tmp_path / "rep"), x="tokens", overwrite=True
        )
    )
    assert {s.run for p in report.plots for s in p.series} == {"mgpo α=dyn β=0.5"}
    assert report.problems == [
        f"{grpo}: samples_trained or response_length_mean missing on a training line, "
        "left out of the plots (--x tokens)"
    ]


# ----------------------------------------------------------------------------- broken runs


def test_broken_runs_are_named_and_skipped(tmp_path: Path, two_runs) -> None:
    good, lines = two_runs["mgpo"]
    missing = tmp_path / "missing-metrics"
    missing.mkdir()
    (missing / "config.json").write_text("{}")
    empty, _ = write_run(tmp_path, "empty", "gspo")
    (empty / "metrics.jsonl").write_text("")
    corrupt, corrupt_lines = write_run(tmp_path, "corrupt", "dapo", seed=5)
    text = (corrupt / "metrics.jsonl").read_text().splitlines()
    text[2] = "{not json"  # step 2 unreadable
    text.append('{"step": 7, "reward_me')  # a line cut short by a killed run
    (corrupt / "metrics.jsonl").write_text("\n".join(text) + "\n")
    (corrupt / "config.json").write_text("[1, 2")
    bad_summary = corrupt / "eval" / "x" / "geometry3k"
    bad_summary.mkdir(parents=True)
    (bad_summary / "summary.json").write_text('{"no": "headline"}')
    out = tmp_path / "rep"
    result = run_main("report", good, missing, empty, corrupt, tmp_path / "nowhere", "--out", out)
    assert result.returncode == 0, result.stderr
    warnings = " ".join(result.stderr.split())
    for fragment in (
        f"{missing / 'metrics.jsonl'}: missing (run skipped)",
        f"{empty / 'metrics.jsonl'}: no readable metric line (run skipped)",
        f"{corrupt / 'metrics.jsonl'} line 3: not JSON, skipped",
        f"{corrupt / 'metrics.jsonl'} line 8: not JSON, skipped",
        f"{corrupt / 'config.json'}: not readable JSON",
        f"{bad_summary / 'summary.json'}: not an mgpo eval summary",
        f"{tmp_path / 'nowhere'}: not a directory (run skipped)",
    ):
        assert fragment in warnings, fragment
    assert (out / "problems.txt").read_text().count("\n") == 7
    page = (out / "index.html").read_text()
    assert "missing (run skipped)" in page
    md = markdown_rows((out / "results.md").read_text(), "Training")
    assert [row[0] for row in md] == ["mgpo α=dyn β=0.5", "corrupt"]  # labelled by folder name
    # The corrupt run still plots every readable line (steps 0, 1, 3.., not 2).
    report = run_report(ReportOptions(runs=(str(good), str(corrupt)), out=str(out), overwrite=True))
    reward = {s.run: s for s in report.plots[0].series}
    assert reward["corrupt"].x == [1.0, 3.0, 4.0, 5.0, 6.0]
    assert reward["corrupt"].raw == [
        line["reward_mean"] for line in corrupt_lines if line["step"] not in (0, 2)
    ]
    assert reward["mgpo α=dyn β=0.5"].raw == values(lines, "reward_mean")[1]


def test_no_usable_run_and_bad_options_are_one_line_errors(tmp_path: Path, two_runs) -> None:
    good, _ = two_runs["grpo"]
    broken = tmp_path / "broken"
    broken.mkdir()
    assert_user_error(
        run_main("report", broken, "--out", tmp_path / "r"), "no usable run", "broken"
    )
    assert not (tmp_path / "r").exists()
    assert_user_error(run_main("report", good, "--smooth", "0"), "--smooth must be positive")
    assert_user_error(run_main("report", good, "--x", "time"), "--x time", "step, tokens")
    assert_user_error(run_main("report", good, "--out", good, "--overwrite"), "would replace run")
    assert_user_error(
        run_main("report", good, "--out", tmp_path, "--overwrite"), "would replace run"
    )
    out = tmp_path / "rep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(run_main("report", good, "--out", out), "not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    assert run_main("report", good, "--out", out, "--overwrite").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "plots", "results.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]  # no staging left


def test_without_matplotlib_the_error_names_the_extra(
    tmp_path: Path, two_runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # matplotlib is installed here; a None entry in sys.modules makes its import fail as if not.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    good, _ = two_runs["grpo"]
    assert_user_error(
        run_main("report", good, "--out", tmp_path / "r"), "pip install 'mgpo[report]'"
    )


# ----------------------------------------------------------------------------- the HTML page

PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const decoded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-decoded", decoded + "/" + images.length);
});
</script>"""
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]


def chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def decoded_images(page_html: str, tmp: Path, name: str) -> tuple[str, list[str]]:
    """``"decoded/total"`` images after load, and the page's console messages."""
    page = tmp / f"{name}.html"
    page.write_text(page_html.replace("</body>", PROBE + "</body>"))
    result = chromium(page, tmp, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-decoded="(\d+/\d+)"', result.stdout)
    assert found, result.stdout[:500]
    return found.group(1), [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs headless Chromium (apt-get install -y chromium)"
)
def test_html_opens_in_chromium_and_shows_every_image(tmp_path: Path, two_runs) -> None:
    (mgpo, _), (grpo, _) = two_runs["mgpo"], two_runs["grpo"]
    config = json.loads((grpo / "config.json").read_text())
    config["run_dir"] = "</pre><script>console.error('injected')</script>"  # must stay text
    (grpo / "config.json").write_text(json.dumps(config))
    out = tmp_path / "rep"
    report = run_report(ReportOptions(runs=(str(mgpo), str(grpo)), out=str(out)))
    html = (out / "index.html").read_text()
    assert 'src="http' not in html and "<link" not in html  # self-contained
    for plot in report.plots:
        assert base64.b64encode(plot.png).decode() in html
    browser = tmp_path / "browser"
    browser.mkdir()
    decoded, console = decoded_images(html, browser, "page")
    assert decoded == f"{len(report.plots)}/{len(report.plots)}"
    assert console == []  # no script errors, and the injected text did not run
    # Control: the probe does see an image that does not decode.
    first = base64.b64encode(report.plots[0].png).decode()
    broken, _ = decoded_images(html.replace(first, "AAAA" + first[40:]), browser, "broken")
    assert broken == f"{len(report.plots) - 1}/{len(report.plots)}"
    # Screenshot of the page as a user sees it: rendered, and not blank.
    shot = tmp_path / "report.png"
    result = chromium(
        out / "index.html", browser, f"--screenshot={shot}", "--window-size=1200,3000"
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 3000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, tables and plots drawn


# ----------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_real_tiny_run(tmp_path: Path, tiny_model_dir: Path, two_runs) -> None:
    """A real 2-step tiny training (with validation) and an eval inside it report like the
    hand-written runs: every quantity plotted from its metrics, its eval in Table 1."""
    data = tmp_path / "train"
    result = run_cli("prepare", "shapes", "--size", "8", "--out", data, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "real"
    settings = {
        "rollout.batch_prompts": 4,
        "rollout.n": 4,
        "optim.micro_batch": 8,
        "trainer.val_every": 1,
        "data.val_limit": 4,
        "trainer.save_every": 0,
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    result = run_cli(
        "train", "--recipe", "tiny", "--data", data, "--val-data", data,
        "--steps", "2", "--run-dir", run, *args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli(
        "eval", "shapes", "--model", run / "final", "--limit", "4", "--max-new-tokens", "4",
        "--workers", "1", "--out", run / "eval",
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [line for line in lines if line["step"] > 0]
    assert set(TRAIN_KEYS) <= set(trained[0])  # the hand-written runs use the real keys
    out = tmp_path / "rep"
    result = run_main("report", run, two_runs["grpo"][0], "--out", out)
    assert result.returncode == 0, result.stderr
    report = run_report(ReportOptions(runs=(str(run),), out=str(out), overwrite=True))
    assert report.problems == [] and report.runs[0].label == "mgpo α=0.5 β=0.5"
    assert [plot.name for plot in report.plots] == list(QUANTITIES)
    for plot in report.plots:
        for line in plot.series:
            assert (line.x, line.raw) == values(lines, line.key), plot.name
    md = (out / "results.md").read_text()
    accuracy = json.loads(next((run / "eval").rglob("summary.json")).read_text())["accuracy"]
    assert markdown_rows(md, "Evaluation") == [["mgpo α=0.5 β=0.5", f"{100 * accuracy:.1f}"]]
    shutil.rmtree(run / "steps")  # a report needs only config, metrics and summaries
    assert run_main("report", run, "--out", out, "--overwrite").returncode == 0
