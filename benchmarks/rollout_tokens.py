"""Rollout throughput, vllm backend against hf backend, in one run on the same model and prompts.

Both engines sample the same prompts (images and text-only) with ``n`` samples each, record
behaviour log-probs, and count the response tokens they produced; the runs alternate after a
warm-up of each, and the report is median tokens/s and their ratio (vllm / hf). Start-up times
(one-off) are printed too.

    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/rollout_tokens.py   # CPU
    python benchmarks/rollout_tokens.py --model Qwen/Qwen2.5-VL-3B-Instruct --device cuda \\
        --prompts 64 --n 5 --max-new-tokens 512 --dtype bfloat16

On a CPU box vLLM's worker binds one core per rank and keeps one for its scheduler, so give the hf
engine the same one compute thread (``OMP_NUM_THREADS=1``). The default model ``tiny-h32`` is the
built-in tiny Qwen2.5-VL with 2 attention heads of 32 (vLLM's CPU attention has no head size 16);
without torchvision, vLLM's Qwen2-VL code needs the test-only shim in ``tests/vllm_cpu_site``
(this script puts it on ``PYTHONPATH`` when torchvision is missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

SHIM = Path(__file__).resolve().parent.parent / "tests" / "vllm_cpu_site"


def prompt_rows(count: int, image_size: int) -> list[dict]:
    """Every other prompt has an image (a shape of varying size), the rest are text-only."""
    rows = []
    for i in range(count):
        if i % 2:
            rows.append({"id": str(i), "prompt": "How many shapes are there?", "images": []})
            continue
        image = Image.new("RGB", (image_size, image_size), (255, 255, 255))
        ImageDraw.Draw(image).ellipse((4, 4, image_size - 8 - i % 5, image_size - 8), fill="red")
        rows.append({"id": str(i), "prompt": "<image>What colour is the shape?", "images": [image]})
    return rows


def vllm_on_this_machine() -> None:
    """vLLM-on-CPU settings: 1 GiB of KV cache, and without torchvision the test-only shim for
    vLLM's Qwen2-VL code (in this process, and on ``PYTHONPATH`` for vLLM's own processes)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if importlib.util.find_spec("torchvision") is None:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(SHIM), os.environ.get("PYTHONPATH")])
        )
        spec = importlib.util.spec_from_file_location("_mgpo_vllm_shim", SHIM / "sitecustomize.py")
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
        shim.install()


def timed(repeats: int, runs: dict[str, Callable[[], int]]) -> dict[str, tuple[float, int]]:
    """Median seconds and tokens per run; runs alternate after one warm-up each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[int]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            tokens[name].append(run())
            times[name].append(time.perf_counter() - start)
    return {
        name: (statistics.median(times[name]), round(statistics.median(tokens[name])))
        for name in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-h32")
    parser.add_argument("--device", default="cpu", help="hf engine device")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    vllm_on_this_machine()

    from stages.models.loading import load_policy
    from stages.models.tiny import build_tiny_model
    from stages.rollout.engine_hf import HFEngine
    from stages.rollout.engine_vllm import VLLMEngine

    scratch = tempfile.TemporaryDirectory()
    model = args.model
    if model == "tiny-h32":
        model = str(build_tiny_model(Path(scratch.name) / "tiny-h32", kind="vision-h32"))

    start = time.perf_counter()
    policy, io = load_policy(model, dtype=args.dtype, device=args.device)
    hf = HFEngine(policy, io, micro_batch_size=args.prompts * args.n)
    hf_start = time.perf_counter() - start
    start = time.perf_counter()
    vllm = VLLMEngine.create(model, dtype=args.dtype, max_model_len=2048)
    vllm_start = time.perf_counter() - start

    rows = prompt_rows(args.prompts, args.image_size)
    sampling = {"n": args.n, "temperature": 1.0, "max_new_tokens": args.max_new_tokens, "seed": 0}

    def run(engine) -> Callable[[], int]:
        def go() -> int:
            groups = engine.generate(rows, **sampling)
            return sum(len(s.response_ids) for group in groups for s in group)

        return go

    results = timed(args.repeats, {"hf": run(hf), "vllm": run(vllm)})
    vllm.close()
    scratch.cleanup()

    print(
        f"model {args.model}, {args.prompts} prompts x n={args.n}, up to {args.max_new_tokens}"
        f" new tokens, {args.dtype}, torch threads {torch.get_num_threads()}"
    )
    print(f"start-up: hf {hf_start:.1f} s, vllm {vllm_start:.1f} s")
    for name, (seconds, tokens) in results.items():
        print(f"{name:>5}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tokens/s")
    (hf_s, hf_t), (vllm_s, vllm_t) = results["hf"], results["vllm"]
    print(f"ratio vllm / hf tokens/s: {(vllm_t / vllm_s) / (hf_t / hf_s):.2f}x")


if __name__ == "__main__":  # vLLM spawns processes that re-import this module
    sys.exit(main())
