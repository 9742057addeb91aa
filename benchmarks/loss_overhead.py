"""Forward+backward time of every policy loss relative to GRPO, measured in the same run.

    python benchmarks/loss_overhead.py [--rounds 15] [--threads 1]

float32 on CPU at [N=64, L=2048] and [N=512, L=512], with all tokens valid ("full") and with
response lengths uniform in [1, L] ("ragged"). Each round times every loss (interleaved, so
machine load hits all of them alike); the ratio to GRPO is taken within a round and the table
shows the median over rounds. Every registered loss is timed, plus MGPO's variants and the
shared options on GRPO (high-entropy mask, rollout correction, dual-clip), which go through
``algos.compute_loss``; plain losses are called directly. Goal from issue 16: MGPO (fixed alpha)
<= 1.5x GRPO. ``--only NAME`` (repeatable) times a subset.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from stages.train import algos

VARIANTS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}),
    "gspo": ("gspo", {}),
    "mgpo": ("mgpo", {"alpha": 0.5, "beta": 0.5}),
    "mgpo_dyn": ("mgpo", {"alpha": "dyn", "beta": 0.5}),
    "mgpo_entropy": ("mgpo", {"uncertainty": "entropy"}),
    "mgpo_paper": ("mgpo", {"selection": "paper"}),
    "dapo": ("dapo", {}),
    "dr_grpo": ("dr_grpo", {}),
    "gpg": ("gpg", {}),
    "sapo": ("sapo", {}),
    "cispo": ("cispo", {}),
    "gmpo": ("gmpo", {}),
    "grpo_entropy_top": ("grpo", {"entropy_top": 0.2}),
    "grpo_tis": ("grpo", {"rollout_correction": "token_truncate"}),
    "grpo_dual_clip": ("grpo", {"clip_ratio_c": 3.0}),
}
SHARED = ("entropy_top", "rollout_correction", "uncertainty")


def make_batch(n: int, length: int, ragged: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logp = -torch.empty(n, length).exponential_(1.0, generator=g)
    old = logp + 0.05 * torch.randn(n, length, generator=g)
    if ragged:
        lengths = torch.randint(1, length + 1, (n,), generator=g)
    else:
        lengths = torch.full((n,), length)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    adv = torch.randn(n, generator=g)
    entropy = torch.rand(n, length, generator=g) * 3
    engine = old + 0.01 * torch.randn(n, length, generator=g)
    return {
        "logp": logp,
        "old_logp": old,
        "advantages": adv,
        "mask": mask,
        "entropy": entropy,
        "engine_logp": engine,
    }


def step_fn(name: str, params: dict, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One forward+backward; through ``compute_loss`` when a shared option needs it."""
    leaf = batch["logp"].clone().requires_grad_(True)
    inputs = (batch["old_logp"], batch["advantages"], batch["mask"])
    if any(key in params for key in SHARED):
        tensors = {"entropy": batch["entropy"], "engine_logp": batch["engine_logp"]}

        def loss_fn():
            return algos.compute_loss(name, leaf, *inputs, **params, **tensors)[0]
    else:
        fn = algos.ALGORITHMS[name]

        def loss_fn():
            return fn(leaf, *inputs, **params)[0]

    def step() -> None:
        leaf.grad = None
        loss_fn().backward()

    return step


def time_once(step: Callable[[], None], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        step()
    return (time.perf_counter() - t0) / inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", action="append", default=[], help="time only these (and grpo)")
    args = ap.parse_args()
    names = [k for k in VARIANTS if not args.only or k in args.only or k == "grpo"]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32 CPU")
    print(f"{'shape':>14} {'mask':>6} {'loss':>9} {'ms':>8} {'x GRPO':>7}")
    for n, length in [(64, 2048), (512, 512)]:
        for ragged in (False, True):
            batch = make_batch(n, length, ragged)
            steps = {k: step_fn(*VARIANTS[k], batch) for k in names}
            for step in steps.values():  # warm-up
                time_once(step, 2)
            times: dict[str, list[float]] = {k: [] for k in steps}
            ratios: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.rounds):
                this = {k: time_once(s, args.inner) for k, s in steps.items()}
                for k, t in this.items():
                    times[k].append(t)
                    ratios[k].append(t / this["grpo"])
            for k in steps:
                ms = 1e3 * statistics.median(times[k])
                ratio = statistics.median(ratios[k])
                tag = "ragged" if ragged else "full"
                print(f"{f'[{n}, {length}]':>14} {tag:>6} {k:>9} {ms:8.3f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
