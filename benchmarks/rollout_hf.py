"""hf rollout throughput: our engine against plain ``model.generate`` in the same run.

The baseline is transformers' own sampling (same batch, same lengths, no log-probs recorded);
the ratio shows what the engine's sampler and log-prob bookkeeping cost. With ``--n`` above 1
every prompt is sampled ``n`` times (``--batch`` prompts, one micro-batch of ``batch * n``
sequences) and the engine also runs with ``share_prompts=False``: each prompt prefilled (and its
images encoded) once per sample, as before the shared prefill. Also prints how long building the
tiny model takes.

    OMP_NUM_THREADS=1 python benchmarks/rollout_hf.py            # tiny model, CPU
    OMP_NUM_THREADS=1 python benchmarks/rollout_hf.py --n 8 --image-size 112 --max-new-tokens 16
    python benchmarks/rollout_hf.py --model Qwen/Qwen2.5-VL-3B-Instruct --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from stages.models.loading import load_policy
from stages.models.tiny import build_tiny_model
from stages.rollout.engine_hf import HFEngine


def prompt_rows(count: int, image_size: int) -> list[dict]:
    rows = []
    for i in range(count):
        image = Image.new("RGB", (image_size, image_size), (255, 255, 255))
        ImageDraw.Draw(image).ellipse((4, 4, image_size - 8 - i % 5, image_size - 8), fill="red")
        rows.append(
            {"id": str(i), "prompt": "<image>How many shapes are there?", "images": [image]}
        )
    return rows


def timed(repeats: int, runs: dict) -> dict[str, tuple[float, int]]:
    """Median seconds and tokens per run; the runs alternate (after a warm-up of each), so load
    from other processes falls on all of them alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            tokens[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), tokens[name]) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model_spec = args.model
    if args.model == "tiny":
        with tempfile.TemporaryDirectory() as scratch:
            for label in ("first, with imports", "again, imports warm"):
                start = time.perf_counter()
                build_tiny_model(Path(scratch) / label.split(",")[0], seed=0)
                print(f"tiny model build ({label}): {time.perf_counter() - start:.2f} s")
    model, io = load_policy(model_spec, device=args.device)
    rows = prompt_rows(args.batch, args.image_size)
    size = args.batch * args.n
    engine = HFEngine(model, io, micro_batch_size=size)
    unshared = HFEngine(model, io, micro_batch_size=size, share_prompts=False)

    def sample(with_engine: HFEngine) -> int:
        groups = with_engine.generate(rows, n=args.n, max_new_tokens=args.max_new_tokens, seed=0)
        return sum(len(s.response_ids) for g in groups for s in g)

    def plain() -> int:
        batch = io.encode([row for row in rows for _ in range(args.n)]).to(engine.device)
        with torch.no_grad():
            out = model.generate(
                **batch.inputs,
                do_sample=True,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                eos_token_id=io.stop_token_ids,
                pad_token_id=io.pad_token_id,
                suppress_tokens=io.banned_token_ids,
            )
        stops = set(io.stop_token_ids)
        tokens = 0
        for row in out[:, batch.inputs["input_ids"].shape[1] :].tolist():
            ends = [i for i, t in enumerate(row) if t in stops]
            tokens += ends[0] + 1 if ends else len(row)  # up to the stop, as the engine counts
        return tokens

    runs = {"plain": plain, "ours": lambda: sample(engine)}
    if args.n > 1:
        runs["unshared"] = lambda: sample(unshared)
    results = timed(args.repeats, runs)
    rates = {name: tokens / seconds for name, (seconds, tokens) in results.items()}
    print(
        f"model {args.model} on {args.device}, {args.batch} prompts x {args.n} with "
        f"{args.image_size}-pixel images, {args.max_new_tokens} new tokens, "
        f"torch threads {torch.get_num_threads()}"
    )
    labels = {
        "plain": "plain generate",
        "unshared": "HFEngine, a prefill per sample",
        "ours": "HFEngine" + (", a prefill per prompt" if args.n > 1 else ""),
    }
    for name, label in labels.items():
        if name in results:
            ms = results[name][0] * 1000
            print(f"{label:<34}: {rates[name]:9.0f} tok/s ({ms:.0f} ms per batch)")
    print(f"ratio engine / plain generate: {rates['ours'] / rates['plain']:.2f}")
    if args.n > 1:
        print(f"ratio shared / per-sample prefill: {rates['ours'] / rates['unshared']:.2f}")


if __name__ == "__main__":
    main()
