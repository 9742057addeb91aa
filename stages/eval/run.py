"""The eval stage's entry function: benchmarks x models -> predictions, scores and summaries.

Each (model, benchmark) pair is worked in its own folder ``OUT/MODEL_TAG/BENCH/SPLIT[-SUBSET]``
through the same shard sets the other stages hand each other, so every piece can be inspected or
reused:

    settings.json   what the folder is evaluated with (written once the benchmark loaded; a
                    rerun must match it)
    prompts/        the benchmark's prompt rows with fitted images (prompt shards)
    rollouts/       the model's responses and log-probs (the rollout stage, as ``mgpo rollout``)
    predictions/    rollout columns + ``correct``, ``extracted`` and the benchmark fields (eval)
    summary.json    ``Benchmark.summarise`` of the predictions plus the settings (written last)

A rerun with the same settings reuses whatever is finished (a killed rollout resumes at its last
part); other settings are refused unless ``overwrite``. Every benchmark, split, subset, source and
model is checked before anything is written, and a user error in a pair removes that pair's new
folder, so bad input leaves no partial output. One engine is built per model, lazily (a model
whose results all exist is never loaded), and reused across its benchmarks.

Under ``accelerate launch`` / ``torchrun`` (:mod:`stages.processes`) every process builds its own
engine; the main process writes the prompts, then each process generates and scores its share of
the rollout parts (part ``j`` is process ``j % K``'s), and the main process seals the shard sets
and writes the summary: one folder, the same as one process makes.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stages.console import console
from stages.errors import MgpoError
from stages.eval.plan import (
    PREDICTIONS,
    PROMPT_KEYS,
    SETTINGS,
    SUMMARY,
    EvalOptions,
    Pair,
    plan,
)
from stages.eval.summary import read_summary, write_summary
from stages.eval.targets import EvalModel
from stages.processes import SINGLE, Processes, processes
from stages.shards import (
    ShardWriter,
    is_complete,
    open_shards,
    read_part,
    staging_dir,
    write_json_atomic,
)

__all__ = ["EvalOptions", "run_eval"]


# --------------------------------------------------------------------------------- the stages


def load_prompts(pair: Pair, done: dict[str, Path]) -> list[dict[str, Any]] | None:
    """The benchmark's prompt rows, or None when they are on disk already (this pair's, or a
    twin's that another model just made). Loading fails before anything is written."""
    twin = done.get(pair.prompt_key())
    if is_complete(pair.prompts) or (twin is not None and is_complete(twin)):
        return None
    s = pair.settings
    rows = pair.bench.load(
        source=s["source"], split=s["split"], subset=s["subset"], limit=s["limit"], query=s["query"]
    )
    if not rows:
        raise MgpoError(f"{pair.bench.name} {s['split']}: no items to evaluate")
    return rows


def write_prompts(pair: Pair, done: dict[str, Path], rows: list[dict[str, Any]] | None) -> None:
    """The prompt rows as prompt shards (copied when another model just made them)."""
    if is_complete(pair.prompts):
        return
    staging = staging_dir(pair.prompts)
    shutil.rmtree(staging, ignore_errors=True)
    if rows is None:
        shutil.copytree(done[pair.prompt_key()], staging)
        os.replace(staging, pair.prompts)
        return
    from stages.images import fit_pixels

    s = pair.settings
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
        max_new_tokens=pair.settings["max_new_tokens"] if pair else options.max_new_tokens or 2048,
        batch_prompts=max(options.batch_size, 64),
        micro_batch=options.batch_size,
        seed=options.seed,
        out=str(pair.rollouts) if pair else None,
        dtype=options.dtype,
        device=options.device,
    )


def make_engine(model: EvalModel, options: EvalOptions):
    """One engine per model, kept alive across its benchmarks."""
    from stages.rollout import make_engine as build

    if processes().is_main:
        console.print(f"loading {model.spec} ({options.backend})")
    try:
        return build(options.backend, rollout_options(None, model, options))
    except ImportError as error:
        raise MgpoError(f"--backend {options.backend} is not available here: {error}") from None


def write_rollouts(pair: Pair, engine: Any, options: EvalOptions, procs: Processes) -> None:
    """The responses, in parts of at most 64 items (a rerun after a kill resumes per part), fewer
    when that shares the items out more evenly over the processes."""
    from stages.rollout import run_rollout

    if is_complete(pair.rollouts):
        return
    options_ = rollout_options(pair, pair.model, options)
    items = open_shards(pair.prompts, "prompts").num_rows
    share = min(options_.batch_prompts, max(1, -(-items // procs.world)))
    options_ = dataclasses.replace(options_, batch_prompts=share)
    run_rollout(options_, engine=engine, processes=procs)


def _aligned(
    rollouts: list[dict[str, Any]], prompts: dict[str, tuple[int, dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rollout rows in prompt order, and the prompt row (without images) of each."""
    rollouts = sorted(rollouts, key=lambda r: (prompts[r["prompt_id"]][0], r["sample"]))
    return rollouts, [prompts[r["prompt_id"]][1] for r in rollouts]


def write_predictions(
    pair: Pair, judge: Any, options: EvalOptions, procs: Processes
) -> list[dict[str, Any]]:
    """Score every response (each under a time limit) and write the eval shards: prediction
    part ``j`` holds rollout part ``j``, scored by the process that owns it."""
    from stages.eval.timed import score_rows_timed

    if not is_complete(pair.predictions):
        columns = ["id", "prompt", "answer", "choices", "source", "meta"]
        rows = open_shards(pair.prompts, "prompts").iter_rows(columns)
        prompts = {row["id"]: (i, row) for i, row in enumerate(rows)}
        parts = open_shards(pair.rollouts, "rollouts").files
        producer = {"command": "mgpo eval", "stage": "eval", "config": pair.settings}
        with ShardWriter(
            pair.predictions, "eval", producer=producer, schema=PREDICTIONS, processes=procs
        ) as writer:
            for index in filter(procs.owns, range(len(parts))):
                rollouts, rows = _aligned(read_part(parts[index]).to_pylist(), prompts)
                scored = score_rows_timed(
                    pair.bench,
                    rows,
                    [r["response"] for r in rollouts],
                    judge=judge,
                    samples=[r["sample"] for r in rollouts],
                    workers=options.workers,
                    timeout_s=options.timeout_s,
                )
                records = [{**r, **score} for r, score in zip(rollouts, scored, strict=True)]
                writer.write_part(records, index=index)
    return list(open_shards(pair.predictions, "eval").iter_rows())


def write_pair_summary(
    pair: Pair, records: list[dict[str, Any]], procs: Processes
) -> dict[str, Any]:
    summary = {
        **pair.bench.summarise(records, split=pair.settings["split"]),
        "model": pair.model.tag,
        "model_spec": pair.model.spec,
        "settings": pair.settings,
    }

    def write() -> None:
        tmp = pair.folder / f".{SUMMARY}.tmp"
        write_summary(tmp, summary)
        os.replace(tmp, pair.folder / SUMMARY)

    procs.main_only(write)
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
    procs: Processes = SINGLE,
) -> dict[str, Any]:
    """Prompts -> rollouts -> predictions -> summary for one pair, reusing finished pieces.

    ``engine`` builds (once) or returns the model's engine; it is only called when responses are
    still missing, before the prompts are made, so a model that cannot load fails fast.
    ``procs``: the job's processes; the main one writes the prompts and the summary.
    """
    if options.overwrite and pair.folder.exists():
        summary = replace_pair(
            pair, lambda p: evaluate_pair(p, engine, judge, options, done, procs), procs
        )
        done[pair.prompt_key()] = pair.prompts
        return summary
    created = _new_folders(pair.folder)
    try:
        live = engine() if not is_complete(pair.rollouts) else None

        def prompts() -> None:
            rows = load_prompts(pair, done)  # settings are written only once loading succeeded
            pair.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(pair.folder / SETTINGS, pair.settings)
            write_prompts(pair, done, rows)

        procs.main_only(prompts)
        done.setdefault(pair.prompt_key(), pair.prompts)
        if live is not None:
            write_rollouts(pair, live, options, procs)
        records = write_predictions(pair, judge, options, procs)
        return write_pair_summary(pair, records, procs)
    except MgpoError:
        # Bad input leaves nothing behind; finished responses stay (a rerun only rescores them).
        if not is_complete(pair.rollouts) and procs.is_main:
            _remove(created)
        raise


def replace_pair(
    pair: Pair, evaluate: Callable[[Pair], dict[str, Any]], procs: Processes = SINGLE
) -> dict[str, Any]:
    """``--overwrite``: evaluate into a hidden sibling folder and swap it in only when the new
    results are complete, as shard sets are replaced; a failure keeps the old results. (The main
    process moves folders; every process evaluates.)"""
    staged = dataclasses.replace(
        pair, folder=pair.folder.with_name(f".{pair.folder.name}.overwrite")
    )

    def start() -> None:
        if staged.saved_settings() != pair.settings:  # a killed --overwrite run resumes
            shutil.rmtree(staged.folder, ignore_errors=True)

    procs.main_only(start)
    try:
        summary = evaluate(staged)
    except MgpoError:
        if procs.is_main:
            shutil.rmtree(staged.folder, ignore_errors=True)
        raise

    def swap() -> None:
        trash = pair.folder.with_name(f".{pair.folder.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(pair.folder, trash)
        os.replace(staged.folder, pair.folder)
        shutil.rmtree(trash, ignore_errors=True)

    procs.main_only(swap)
    return summary


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
        close = getattr(self.engine, "close", None)  # vllm: its workers and process groups
        if close is not None:
            close()
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
    procs = processes()
    judge = make_judge(options)
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    done: dict[str, Path] = {}
    say = console.print if procs.is_main else lambda *_: None
    for model, model_pairs in _by_model(pairs):
        engine = LazyEngine(model, options)
        for pair in model_pairs:
            procs.barrier()  # every process sees the pair's folder as it is now
            if pair.finished() and not options.overwrite:
                say(f"{pair.folder}: done before with these settings; reusing it")
                summary = read_summary(pair.folder / SUMMARY)
            else:
                say(f"[bold]{pair.bench.name}[/] · {model.tag} -> {pair.folder}")
                summary = evaluate_pair(pair, engine, judge, options, done, procs)
            summaries.setdefault(model.tag, {})[pair.bench.name] = summary
        engine.close()
    return summaries
