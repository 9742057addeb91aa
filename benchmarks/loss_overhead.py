"""Forward+backward time of every policy loss relative to GRPO, measured in the same run.

    python benchmarks/loss_overhead.py [--rounds 15] [--threads 1]

float32 on CPU at [N=64, L=2048] and [N=512, L=512], with all tokens valid ("full") and with
response lengths uniform in [1, L] ("ragged"). Each round times every loss (interleaved, so
machine load hits all of them alike); the ratio to GRPO is taken within a round and the table
shows the median over rounds. Goal from the issue: MGPO <= 1.10x GRPO.
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
    "dapo": ("dapo", {}),
    "dr_grpo": ("dr_grpo", {}),
    "gpg": ("gpg", {}),
}


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
    return {"logp": logp, "old_logp": old, "advantages": adv, "mask": mask}


def step_fn(name: str, params: dict, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    fn = algos.ALGORITHMS[name]
    leaf = batch["logp"].clone().requires_grad_(True)

    def step() -> None:
        leaf.grad = None
        loss, _ = fn(leaf, batch["old_logp"], batch["advantages"], batch["mask"], **params)
        loss.backward()

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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32 CPU")
    print(f"{'shape':>14} {'mask':>6} {'loss':>9} {'ms':>8} {'x GRPO':>7}")
    for n, length in [(64, 2048), (512, 512)]:
        for ragged in (False, True):
            batch = make_batch(n, length, ragged)
            steps = {k: step_fn(name, p, batch) for k, (name, p) in VARIANTS.items()}
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
