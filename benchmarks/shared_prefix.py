"""The shared-prefix forward against the standard one: old-log-prob and update time and memory.

For each setting, one fresh process loads the policy through the trainer's own ``Policy`` (the
recipe's optimizer, micro-batch and mini-batches), builds one step's batch (real prompts from the
prepared data, ``n`` random responses of ``--response`` tokens per prompt, rewards that give every
group a signal) and then, alternating ``trainer.shared_prefix`` off / on / auto (in rotating
order) after one warm-up each, times

- ``logprobs``: the frozen old-log-prob pass (``Policy.frozen_logprobs``, no gradient);
- ``update``: all optimizer steps of the step (``update(..., frozen_old=True)``'s ``update_s``);

and their peak memory: the process's resident high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` after ``malloc_trim``) minus its resident size at the start of the pass.
Times are medians over ``--repeats``; the ratios are off / on and off / auto (above 1: faster
than the standard forward). ``auto`` is what a run does by default: ``packs`` says whether its
cost model chose packing for the step, and off / auto below 0.95 would break its promise of never
being more than 5 % slower than ``off`` (``--response`` longer than the prompt is the regime
where packing can lose).

    OMP_NUM_THREADS=1 python benchmarks/shared_prefix.py                       # tiny, n = 4, 8, 16
    OMP_NUM_THREADS=1 python benchmarks/shared_prefix.py --settings smollm2:8 \\
        --smollm2 models/smollm2-135m-instruct

A setting is ``MODEL:N`` with MODEL ``tiny`` (the built-in Qwen2.5-VL-architecture model on
``shapes`` at 112-pixel images, the tiny recipe: 16 prompts, one micro-batch of 256) or
``smollm2`` (SmolLM2-135M on ``arithmetic``, the smollm2_arithmetic recipe: 4 prompts, micro-batch
16, 2 mini-batches).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import child_env, prepare_data  # noqa: E402

RECIPES = {"tiny": "tiny", "smollm2": "smollm2_arithmetic"}
DATA = {"tiny": "shapes", "smollm2": "arithmetic"}


def _status(key: str) -> int:
    """A ``/proc/self/status`` size in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> int:
    """Hand freed heap back to the OS, reset the high-water mark; the resident size now."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _batch(prompts_dir: str, prompts: int, n: int, response: int, io, seed: int):
    from stages.shards import open_shards, prompt_row
    from stages.train.samples import Group, StepBatch

    shards = open_shards(prompts_dir, "prompts").iter_rows()
    rows = [prompt_row(r) for r in itertools.islice(shards, prompts)]
    rng = random.Random(seed)
    banned = set(io.banned_token_ids) | set(io.stop_token_ids)
    allowed = [t for t in range(len(io.tokenizer)) if t not in banned]
    groups = []
    for row in rows:
        responses = [[rng.choice(allowed) for _ in range(response)] for _ in range(n)]
        rewards = [float(i % 2) for i in range(n)]  # every group has a signal
        groups.append(
            Group(row["id"], responses, [[0.0] * response] * n, rewards, [{}] * n, ["length"] * n)
        )
    return StepBatch(groups), {row["id"]: row for row in rows}


def worker(args: argparse.Namespace) -> None:
    import torch

    from stages.config import apply_overrides, build, load_recipe, parse_override
    from stages.models.prompt_length import prompt_lengths
    from stages.train import batching
    from stages.train.config import TrainConfig
    from stages.train.policy import Policy
    from stages.train.shared_prefix import decide
    from stages.train.update import update

    kind, n = args.setting.split(":")
    settings = {"model.name": args.model, "data.train": args.prompts, "rollout.n": n}
    overrides = [parse_override(f"{k}={v}") for k, v in settings.items()]
    config = build(TrainConfig, apply_overrides(load_recipe(RECIPES[kind]), overrides))
    torch.set_num_threads(1)
    policy = Policy(config)
    batch, rows = _batch(
        args.prompts, config.rollout.batch_prompts, int(n), args.response, policy.io, 0
    )
    prompt_ids, responses, _, _, group_ids = batch.flat()
    sample_rows = [rows[p] for p in prompt_ids]
    prompt_tokens = prompt_lengths(policy.io, list(rows.values()))
    units = batching.units(range(len(responses)), group_ids, config.optim.micro_batch)
    auto_packs = decide("auto", policy.module, policy.io, sample_rows, units, responses)
    results: dict[str, dict[str, list[float]]] = {}
    for repeat in range(args.repeats + 1):  # repeat 0: warm-up of each mode
        modes = ("off", "on", "auto")
        for mode in modes[repeat % 3 :] + modes[: repeat % 3]:  # no mode always runs first
            trainer = dataclasses.replace(config.trainer, shared_prefix=mode)
            policy.config = dataclasses.replace(config, trainer=trainer)
            shared = mode == "on" or (mode == "auto" and auto_packs)
            base = _reset_peak()
            started = time.perf_counter()
            policy.frozen_logprobs(policy.model, sample_rows, responses, group_ids, shared)
            logprobs_s = time.perf_counter() - started
            logprobs_mem = _status("VmHWM") - base
            base = _reset_peak()
            metrics = update(policy, batch, rows, repeat, frozen_old=True)
            update_mem = _status("VmHWM") - base
            assert metrics["shared_prefix"] == float(shared)
            if repeat:
                out = results.setdefault(mode, {})
                for key, value in (
                    ("logprobs_s", logprobs_s),
                    ("update_s", metrics["update_s"]),
                    ("logprobs_mib", logprobs_mem / 2**20),
                    ("update_mib", update_mem / 2**20),
                ):
                    out.setdefault(key, []).append(value)
    summary = {mode: {k: statistics.median(v) for k, v in d.items()} for mode, d in results.items()}
    summary["prompt_tokens"] = statistics.mean(prompt_tokens)
    summary["samples"] = len(responses)
    summary["micro_batch"] = config.optim.micro_batch
    summary["auto_packs"] = auto_packs
    print(json.dumps(summary))


def run_setting(setting: str, folder: Path, args: argparse.Namespace) -> dict:
    kind = setting.split(":")[0]
    model = "tiny" if kind == "tiny" else str(args.smollm2)
    prompts = folder / DATA[kind] / "train"
    if not (prompts / "manifest.json").exists():  # prepared once for the settings of a model
        prepare_data(folder / DATA[kind], dataset=DATA[kind])
    command = [sys.executable, __file__, "--worker", "--setting", setting, "--model", model]
    command += ["--prompts", str(prompts), "--repeats", str(args.repeats)]
    command += ["--response", str(args.response)]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["tiny:4", "tiny:8", "tiny:16"])
    parser.add_argument("--response", type=int, default=16, help="tokens per response")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smollm2", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--keep", type=Path, help="keep the prepared data here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"old log-probs and update, trainer.shared_prefix off vs on; {args.response}-token "
        f"responses, medians of {args.repeats} alternating repeats, "
        f"OMP_NUM_THREADS={child_env()['OMP_NUM_THREADS']}"
    )
    header = f"{'setting':<11} {'samples':>7} {'prompt':>6} {'pass':<9}"
    header += f" {'off s':>8} {'on s':>8} {'off/on':>7} {'off MiB':>8} {'on MiB':>8}"
    header += f" {'auto s':>8} {'off/auto':>8} {'packs':>5}"
    print(header)
    with tempfile.TemporaryDirectory(prefix="mgpo-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for setting in args.settings:
            r = run_setting(setting, folder, args)
            for name in ("logprobs", "update"):
                off, on = r["off"], r["on"]
                line = f"{setting:<11} {r['samples']:>7} {r['prompt_tokens']:>6.0f} {name:<9}"
                line += f" {off[name + '_s']:>8.3f} {on[name + '_s']:>8.3f}"
                line += f" {off[name + '_s'] / on[name + '_s']:>7.2f}"
                line += f" {off[name + '_mib']:>8.1f} {on[name + '_mib']:>8.1f}"
                auto = r["auto"][name + "_s"]
                packs = "yes" if r["auto_packs"] else "no"
                line += f" {auto:>8.3f} {off[name + '_s'] / auto:>8.2f} {packs:>5}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
