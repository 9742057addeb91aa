"""The eval stage's entry function: benchmarks x models -> predictions, scores and summaries.

Each (model, benchmark) pair is worked in its own folder ``OUT/MODEL_TAG/BENCH`` through the
same shard sets the other stages hand each other, so every piece can be inspected or reused:

    settings.json   what the folder is evaluated with (written first; a rerun must match it)
    prompts/        the benchmark's prompt rows with fitted images (prompt shards)
    rollouts/       the model's responses and log-probs (the rollout stage, as ``mgpo rollout``)
    predictions/    rollout columns + ``correct``, ``extracted`` and the benchmark fields (eval)
    summary.json    ``Benchmark.summarise`` of the predictions plus the settings (written last)

A rerun with the same settings reuses whatever is finished (a killed rollout resumes at its last
part); other settings are refused unless ``overwrite``. Every benchmark, split, subset, source and
model is checked before anything is written, and a user error in a pair removes that pair's new
folder, so bad input leaves no partial output. One engine is built per model, lazily (a model
whose results all exist is never loaded), and reused across its benchmarks.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from mgpo_cli.console import console
from mgpo_cli.errors import MgpoError
from mgpo_cli.schemas import EVAL, ROLLOUTS
from mgpo_cli.shards import (
    ShardWriter,
    is_complete,
    open_shards,
    staging_dir,
    write_json_atomic,
)
from stages.eval.benchmark import Benchmark
from stages.eval.registry import resolve
from stages.eval.summary import read_summary, write_summary
from stages.eval.targets import EvalModel, resolve_models

SETTINGS = "settings.json"
SUMMARY = "summary.json"
# Image bounds per benchmark, as the paper's framework feeds its evaluation (and ``mgpo prepare
# geometry3k`` its training data); shapes keeps its drawings as they are, as prepare does.
DEFAULT_PIXELS = (262_144, 4_194_304)
PIXELS: dict[str, tuple[int, int]] = {"shapes": (0, 1 << 40)}
# Settings that decide the prompts (the rest decide responses and scores).
PROMPT_KEYS = ("bench", "split", "subset", "query", "limit", "source", "min_pixels", "max_pixels")
# Eval shards: the rollout columns, then the score and the benchmark fields of each item.
PREDICTIONS = pa.schema(
    list(ROLLOUTS)
    + [f for f in EVAL if f.name not in ROLLOUTS.names]
    + [
        pa.field("normalised", pa.string()),
        pa.field("via", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("source", pa.string()),
        pa.field("meta", pa.string()),
    ]
)


@dataclass(frozen=True)
class EvalOptions:
    """Everything ``mgpo eval`` was asked for."""

    bench: str  # a benchmark name, or "all" for the paper's suite
    models: tuple[str, ...]
    backend: str = "hf"
    split: str | None = None
    subset: str | None = None
    query: str | None = None
    limit: int | None = None
    source: str | None = None  # the benchmark's local copy; with "all", a folder of BENCH folders
    out: str = "evals"
    judge: str | None = None
    judge_model: str | None = None
    workers: int = 4
    timeout_s: float = 10.0
    max_new_tokens: int = 2048
    batch_size: int = 16
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    min_pixels: int | None = None
    max_pixels: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    overwrite: bool = False


@dataclass(frozen=True)
class Pair:
    """One model on one benchmark: its folder and the settings that must match to reuse it."""

    model: EvalModel
    bench: Benchmark
    folder: Path
    settings: dict[str, Any]

    @property
    def prompts(self) -> Path:
        return self.folder / "prompts"

    @property
    def rollouts(self) -> Path:
        return self.folder / "rollouts"

    @property
    def predictions(self) -> Path:
        return self.folder / "predictions"

    def prompt_key(self) -> str:
        return json.dumps({k: self.settings[k] for k in PROMPT_KEYS}, sort_keys=True)

    def saved_settings(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / SETTINGS).read_text())
        except (OSError, ValueError):
            return None

    def finished(self) -> bool:
        return (
            self.saved_settings() == self.settings
            and is_complete(self.predictions)
            and (self.folder / SUMMARY).is_file()
        )


# ------------------------------------------------------------------------------ checking input


def check_options(options: EvalOptions) -> None:
    for name, value in (
        ("--limit", options.limit),
        ("--max-new-tokens", options.max_new_tokens),
        ("--batch-size", options.batch_size),
        ("-n", options.n),
        ("--workers", options.workers),
        ("--timeout", options.timeout_s),
    ):
        if value is not None and value <= 0:
            raise MgpoError(f"{name} must be positive, got {value}")
    if options.temperature < 0:
        raise MgpoError(f"--temperature must be >= 0, got {options.temperature}")
    if options.n > 1 and options.temperature == 0:
        raise MgpoError(
            f"-n {options.n} with greedy decoding repeats one answer; set --temperature"
        )
    if not 0 < options.top_p <= 1:
        raise MgpoError(f"--top-p must be in (0, 1], got {options.top_p}")
    from stages.rollout.backends import BACKENDS

    if options.backend not in BACKENDS:
        raise MgpoError(
            f"--backend {options.backend}: unknown backend (choose from {', '.join(BACKENDS)})"
        )


def bench_source(bench: Benchmark, options: EvalOptions, several: bool) -> str | None:
    """The local copy of ``bench``: ``--source`` itself, or ``--source/BENCH`` for several."""
    from stages.eval.shapes import GeneratedBenchmark

    if options.source is None:
        return None
    if isinstance(bench, GeneratedBenchmark) and not several:
        raise MgpoError(f"{bench.name} is generated locally: --source does not apply")
    root = Path(options.source).expanduser()
    if not root.exists():
        raise MgpoError(f"--source {options.source}: no such file or directory")
    if not several:
        return str(root.resolve())
    folder = root / bench.name
    if not folder.is_dir():
        raise MgpoError(
            f"--source {options.source}: no folder {bench.name}/ in it (with several benchmarks"
            " --source holds one folder per benchmark)"
        )
    return str(folder.resolve())


def check_source_split(bench: Benchmark, source: str | None, split: str) -> None:
    """A local folder must hold the split asked for (before any model loads)."""
    from stages.eval.sources import split_files

    if source is not None and Path(source).is_dir():
        split_files(Path(source), split, list(bench.splits))


def pair_settings(
    bench: Benchmark, model: EvalModel, options: EvalOptions, source: str | None
) -> dict[str, Any]:
    split = bench.check_options(options.split, options.subset, options.query)
    low, high = PIXELS.get(bench.name, DEFAULT_PIXELS)
    low = low if options.min_pixels is None else options.min_pixels
    high = high if options.max_pixels is None else options.max_pixels
    if low > high:
        raise MgpoError(f"--min-pixels {low} is larger than --max-pixels {high}")
    return {
        "bench": bench.name,
        "split": split,
        "subset": options.subset,
        "query": options.query or bench.queries[0],
        "limit": options.limit,
        "source": source,
        "min_pixels": low,
        "max_pixels": high,
        "model": model.load,
        "model_fingerprint": model.fingerprint,
        "backend": options.backend,
        "dtype": options.dtype,
        "n": options.n,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "max_new_tokens": options.max_new_tokens,
        "seed": options.seed,
        "judge": options.judge,
        "judge_model": options.judge_model,
    }


def check_reusable(pair: Pair, overwrite: bool) -> None:
    """Refuse a folder evaluated with other settings (or not ours) unless ``overwrite``."""
    if overwrite or not pair.folder.exists():
        return
    saved = pair.saved_settings()
    if saved is None:
        if any(pair.folder.iterdir()):
            raise MgpoError(
                f"{pair.folder}: exists and is not an mgpo eval folder (pass --overwrite)"
            )
        return
    if saved != pair.settings:
        changed = [
            k for k in sorted({*saved, *pair.settings}) if saved.get(k) != pair.settings.get(k)
        ]
        detail = ", ".join(
            f"{k}: {saved.get(k)!r} -> {pair.settings.get(k)!r}" for k in changed[:3]
        )
        raise MgpoError(
            f"{pair.folder}: evaluated before with other settings ({detail}); pass --overwrite"
            " to replace it or --out to keep both"
        )


def plan(options: EvalOptions) -> list[Pair]:
    """Every (model, benchmark) pair, all input checked; nothing is written."""
    check_options(options)
    benches = resolve(options.bench)
    sources = {}
    for bench in benches:
        split = bench.check_options(options.split, options.subset, options.query)
        sources[bench.name] = bench_source(bench, options, several=len(benches) > 1)
        check_source_split(bench, sources[bench.name], split)
    models = resolve_models(options.models)
    out = Path(options.out).expanduser()
    pairs = [
        Pair(
            model,
            bench,
            out / model.tag / bench.name,
            pair_settings(bench, model, options, sources[bench.name]),
        )
        for model in models
        for bench in benches
    ]
    for pair in pairs:
        check_reusable(pair, options.overwrite)
    return pairs


# --------------------------------------------------------------------------------- the stages


def write_prompts(pair: Pair, done: dict[str, Path]) -> None:
    """The benchmark's prompt rows as prompt shards (copied when another model just made them)."""
    if is_complete(pair.prompts):
        return
    twin = done.get(pair.prompt_key())
    staging = staging_dir(pair.prompts)
    shutil.rmtree(staging, ignore_errors=True)
    if twin is not None and is_complete(twin):
        shutil.copytree(twin, staging)
        os.replace(staging, pair.prompts)
        return
    from mgpo_cli.images import fit_pixels

    s = pair.settings
    rows = pair.bench.load(
        source=s["source"], split=s["split"], subset=s["subset"], limit=s["limit"], query=s["query"]
    )
    if not rows:
        raise MgpoError(f"{pair.bench.name} {s['split']}: no items to evaluate")
    producer = {"command": "mgpo eval", "stage": "eval", "config": {k: s[k] for k in PROMPT_KEYS}}
    with ShardWriter(pair.prompts, "prompts", producer=producer, rows_per_part=256) as writer:
        for row in rows:
            images = [
                fit_pixels(image, s["min_pixels"], s["max_pixels"]) for image in row["images"]
            ]
            writer.add([{**row, "images": images}])


def rollout_options(pair: Pair | None, model: EvalModel, options: EvalOptions):
    from stages.rollout import RolloutOptions

    return RolloutOptions(
        prompts=str(pair.prompts) if pair else "",
        model=model.load,
        backend=options.backend,
        n=options.n,
        temperature=options.temperature,
        top_p=options.top_p,
        max_new_tokens=options.max_new_tokens,
        batch_prompts=max(options.batch_size, 64),
        micro_batch=options.batch_size,
        seed=options.seed,
        out=str(pair.rollouts) if pair else None,
        dtype=options.dtype,
        device=options.device,
    )


def make_engine(model: EvalModel, options: EvalOptions):
    """One engine per model, kept alive across its benchmarks."""
    from stages.rollout.backends import make_engine as build

    console.print(f"loading {model.spec} ({options.backend})")
    try:
        return build(options.backend, rollout_options(None, model, options))
    except ImportError as error:
        raise MgpoError(f"--backend {options.backend} is not available here: {error}") from None


def write_rollouts(pair: Pair, engine: Any, options: EvalOptions) -> None:
    from stages.rollout import run_rollout

    if not is_complete(pair.rollouts):
        run_rollout(rollout_options(pair, pair.model, options), engine=engine)


def _aligned(pair: Pair) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rollout rows in prompt order, and the prompt row (without images) of each."""
    columns = ["id", "prompt", "answer", "choices", "source", "meta"]
    prompts = list(open_shards(pair.prompts, "prompts").iter_rows(columns))
    order = {row["id"]: i for i, row in enumerate(prompts)}
    rollouts = sorted(
        open_shards(pair.rollouts, "rollouts").iter_rows(),
        key=lambda r: (order[r["prompt_id"]], r["sample"]),
    )
    return rollouts, [prompts[order[r["prompt_id"]]] for r in rollouts]


def write_predictions(pair: Pair, judge: Any, options: EvalOptions) -> list[dict[str, Any]]:
    """Score every response (each under a time limit) and write the eval shards."""
    from stages.eval.timed import score_rows_timed

    if is_complete(pair.predictions):
        return list(open_shards(pair.predictions, "eval").iter_rows())
    rollouts, rows = _aligned(pair)
    scored = score_rows_timed(
        pair.bench,
        rows,
        [r["response"] for r in rollouts],
        judge=judge,
        samples=[r["sample"] for r in rollouts],
        workers=options.workers,
        timeout_s=options.timeout_s,
    )
    records = [{**rollout, **score} for rollout, score in zip(rollouts, scored, strict=True)]
    producer = {"command": "mgpo eval", "stage": "eval", "config": pair.settings}
    with ShardWriter(
        pair.predictions, "eval", producer=producer, schema=PREDICTIONS, rows_per_part=4096
    ) as writer:
        writer.add(records)
    return records


def write_pair_summary(pair: Pair, records: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {
        **pair.bench.summarise(records),
        "model": pair.model.tag,
        "model_spec": pair.model.spec,
        "settings": pair.settings,
    }
    tmp = pair.folder / f".{SUMMARY}.tmp"
    write_summary(tmp, summary)
    os.replace(tmp, pair.folder / SUMMARY)
    return summary


# ------------------------------------------------------------------------------------ driving


def _new_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def _remove(created: list[Path]) -> None:
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
    for folder in created[1:]:
        try:
            folder.rmdir()
        except OSError:
            break


def evaluate_pair(
    pair: Pair,
    engine: Callable[[], Any],
    judge: Any,
    options: EvalOptions,
    done: dict[str, Path],
) -> dict[str, Any]:
    """Prompts -> rollouts -> predictions -> summary for one pair, reusing finished pieces.

    ``engine`` builds (once) or returns the model's engine; it is only called when responses are
    still missing, before the prompts are made, so a model that cannot load fails fast.
    """
    if options.overwrite and pair.folder.exists():
        shutil.rmtree(pair.folder)
    created = _new_folders(pair.folder)
    try:
        live = engine() if not is_complete(pair.rollouts) else None
        pair.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(pair.folder / SETTINGS, pair.settings)
        write_prompts(pair, done)
        done.setdefault(pair.prompt_key(), pair.prompts)
        if live is not None:
            write_rollouts(pair, live, options)
        records = write_predictions(pair, judge, options)
        return write_pair_summary(pair, records)
    except MgpoError:
        # Bad input leaves nothing behind; finished responses stay (a rerun only rescores them).
        if not is_complete(pair.rollouts):
            _remove(created)
        raise


class LazyEngine:
    """A model's engine, built on first use and kept for its other benchmarks."""

    def __init__(self, model: EvalModel, options: EvalOptions):
        self.model = model
        self.options = options
        self.engine: Any = None

    def __call__(self) -> Any:
        if self.engine is None:
            self.engine = make_engine(self.model, self.options)
        return self.engine

    def close(self) -> None:
        """Give the model's memory back before the next one loads."""
        if self.engine is None:
            return
        self.engine = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def make_judge(options: EvalOptions) -> Any:
    """The answer judge, its server reached once now rather than after hours of generation."""
    if not options.judge:
        return None
    from stages.eval.judge import Judge

    listed = Judge(options.judge).model_name()
    return Judge(options.judge, options.judge_model or listed)


def _by_model(pairs: list[Pair]) -> Iterator[tuple[EvalModel, list[Pair]]]:
    models = list(dict.fromkeys(p.model for p in pairs))
    for model in models:
        yield model, [p for p in pairs if p.model == model]


def run_eval(options: EvalOptions) -> dict[str, dict[str, dict[str, Any]]]:
    """Evaluate every model on every benchmark; returns ``{model_tag: {bench: summary}}``."""
    pairs = plan(options)
    judge = make_judge(options)
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    done: dict[str, Path] = {}
    for model, model_pairs in _by_model(pairs):
        engine = LazyEngine(model, options)
        for pair in model_pairs:
            if pair.finished() and not options.overwrite:
                console.print(f"{pair.folder}: done before with these settings; reusing it")
                summary = read_summary(pair.folder / SUMMARY)
            else:
                console.print(f"[bold]{pair.bench.name}[/] · {model.tag} -> {pair.folder}")
                summary = evaluate_pair(pair, engine, judge, options, done)
            summaries.setdefault(model.tag, {})[pair.bench.name] = summary
        engine.close()
    return summaries
