"""What ``mgpo eval`` will do, checked before anything is written: one ``Pair`` (a model on a
benchmark split, its folder ``OUT/MODEL_TAG/BENCH/SPLIT[-SUBSET]`` and settings) per combination
asked for.

Every benchmark, split, subset, source and model is validated here, and a pair's saved settings
must match for its finished work to be reused (see :mod:`stages.eval.run`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.config import (
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitFloat,
    PositiveFloat,
    PositiveInt,
    check_values,
)
from stages.errors import MgpoError
from stages.eval.benchmark import Benchmark
from stages.eval.registry import resolve
from stages.eval.targets import EvalModel, resolve_models
from stages.outputs import check_writable
from stages.schemas import EVAL, ROLLOUTS
from stages.shards import is_complete

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
    limit: PositiveInt | None = None
    source: str | None = None  # the benchmark's local copy; with "all", a folder of BENCH folders
    out: str = "evals"
    judge: str | None = None
    judge_model: str | None = None
    workers: PositiveInt = 4
    timeout_s: PositiveFloat = 10.0
    max_new_tokens: PositiveInt | None = None  # None: the benchmark's own (2048 for most)
    batch_size: PositiveInt = 16
    n: PositiveInt = 1
    temperature: NonNegativeFloat = 0.0
    top_p: OpenUnitFloat = 1.0
    seed: int = 0
    min_pixels: NonNegativeInt | None = None
    max_pixels: PositiveInt | None = None
    dtype: str = "auto"
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_values(self, flags={"timeout_s": "--timeout", "n": "-n"})


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
    """What ranges alone cannot say (the ranges are checked when ``EvalOptions`` is made)."""
    if options.n > 1 and options.temperature == 0:
        raise MgpoError(
            f"-n {options.n} with greedy decoding repeats one answer; set --temperature"
        )
    from stages.rollout import BACKENDS

    if options.backend not in BACKENDS:
        raise MgpoError(
            f"--backend {options.backend}: unknown backend (choose from {', '.join(BACKENDS)})"
        )


def bench_source(bench: Benchmark, options: EvalOptions, several: bool) -> str | None:
    """The local copy of ``bench``: ``--source`` itself, or ``--source/BENCH`` for several."""
    from stages.eval.generated import GeneratedBenchmark

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
        split_files(Path(source), split, list(bench.splits), bench.hub_configs.get(split))


def results_folder(
    out: Path, model: EvalModel, bench: Benchmark, split: str, subset: str | None
) -> Path:
    """``OUT/MODEL_TAG/BENCH/SPLIT`` (``SPLIT-SUBSET`` for a subset): a full run and a subset
    run, or two splits, never share a folder."""
    return out / model.tag / bench.name / (f"{split}-{subset}" if subset else split)


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
        "max_new_tokens": options.max_new_tokens or bench.max_new_tokens,
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
    out = Path(options.out).expanduser()
    check_writable(out, "--out")
    models = resolve_models(options.models)
    pairs = []
    for model in models:
        for bench in benches:
            settings = pair_settings(bench, model, options, sources[bench.name])
            folder = results_folder(out, model, bench, settings["split"], settings["subset"])
            pairs.append(Pair(model, bench, folder, settings))
    for pair in pairs:
        check_reusable(pair, options.overwrite)
    return pairs
