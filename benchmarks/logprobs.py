"""Peak memory and time of the lean log-prob (+entropy) path against ``log_softmax(...).gather``.

    python benchmarks/logprobs.py [--tokens 1024] [--batch 4] [--vocab 151936] [--rounds 2]

Logits ``[batch, tokens, vocab]`` in bf16 (as Qwen2.5-VL produces them), temperature 1.0, on CPU.
Every method runs in its own fresh subprocess: peak memory is the process high-water mark
(``ru_maxrss``) minus the resident size once the logits exist, so it counts only what the
method allocates on top of its input (including the logits gradient in fwd+bwd). Time is the
median of the timed repeats; rounds interleave the methods so machine load hits all alike, and
the ratios are medians over rounds. Baselines:

- ``gather``: ``log_softmax(logits.float() / T, -1).gather(-1, y)`` (what the issue names);
- ``gather+ent``: the same plus ``-(p * logp).sum(-1)``, the naive way to get the entropy too.

Goal from the issue: lean (log-prob + entropy) <= 0.25x the peak memory of ``gather`` at
<= 1.2x its time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

METHODS = ["gather", "gather+ent", "lean", "lean+ent"]
MODES = ["fwd", "fwd+bwd"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _naive(logits: torch.Tensor, targets: torch.Tensor, entropy: bool) -> list[torch.Tensor]:
    logp_all = torch.log_softmax(logits.float() / 1.0, dim=-1)
    out = [logp_all.gather(-1, targets[..., None]).squeeze(-1)]
    if entropy:
        out.append(-(logp_all.exp() * logp_all).sum(-1))
    return out


def _lean(logits: torch.Tensor, targets: torch.Tensor, entropy: bool) -> list[torch.Tensor]:
    from stages.train.logprobs import logprobs_from_logits

    res = logprobs_from_logits(logits, targets, with_entropy=entropy)
    return [res.logp] + ([res.entropy] if entropy else [])


def child(method: str, mode: str, batch: int, tokens: int, vocab: int, repeats: int) -> None:
    """Run one method in this (fresh) process and print a JSON line."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    g = torch.Generator().manual_seed(0)
    logits = torch.empty(batch, tokens, vocab, dtype=torch.bfloat16)
    for b in range(batch):  # fill in place: no float32 staging copy of the whole tensor
        logits[b].normal_(0.0, 3.0, generator=g)
    targets = torch.randint(0, vocab, (batch, tokens), generator=g)
    grad = mode == "fwd+bwd"
    fn = _lean if method.startswith("lean") else _naive
    entropy = method.endswith("+ent")
    if grad:
        logits.requires_grad_(True)
    base = _rss_bytes()
    times = []
    for _ in range(repeats + 1):  # first run is warm-up
        logits.grad = None
        t0 = time.perf_counter()
        if grad:
            outs = fn(logits, targets, entropy)
            sum(o.sum() for o in outs).backward()
        else:
            with torch.no_grad():
                outs = fn(logits, targets, entropy)
        times.append(time.perf_counter() - t0)
        del outs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak": peak, "time": statistics.median(times[1:])}))


def run_child(args: argparse.Namespace, method: str, mode: str) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        mode,
        "--batch",
        str(args.batch),
        "--tokens",
        str(args.tokens),
        "--vocab",
        str(args.vocab),
        "--repeats",
        str(args.repeats),
    ]
    env = dict(os.environ, BENCH_THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "MODE"))
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.batch, args.tokens, args.vocab, args.repeats)
        return
    modes = args.modes.split(",")
    gib = args.batch * args.tokens * args.vocab * 2 / 2**30
    print(
        f"torch {torch.__version__}, threads {args.threads}, logits bf16 "
        f"[{args.batch}, {args.tokens}, {args.vocab}] = {gib:.2f} GiB, rounds {args.rounds}"
    )
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for mode in modes:
            for method in METHODS:
                results.setdefault((method, mode), []).append(run_child(args, method, mode))
    print(
        f"{'mode':>8} {'method':>11} {'peak GiB':>9} {'time s':>7} {'mem/gather':>10} "
        f"{'time/gather':>11} {'mem/g+ent':>9} {'time/g+ent':>10}"
    )
    for mode in modes:
        for method in METHODS:
            runs = results[(method, mode)]
            peak = statistics.median(r["peak"] for r in runs)
            secs = statistics.median(r["time"] for r in runs)
            cols = []
            for base in ("gather", "gather+ent"):
                base_runs = results[(base, mode)]
                cols.append(
                    statistics.median(
                        r["peak"] / b["peak"] for r, b in zip(runs, base_runs, strict=True)
                    )
                )
                cols.append(
                    statistics.median(
                        r["time"] / b["time"] for r, b in zip(runs, base_runs, strict=True)
                    )
                )
            print(
                f"{mode:>8} {method:>11} {peak / 2**30:9.2f} {secs:7.2f} {cols[0]:10.2f} "
                f"{cols[1]:11.2f} {cols[2]:9.2f} {cols[3]:10.2f}"
            )


if __name__ == "__main__":
    main()
