"""Two measurements of the training path at scale, as ratios against a baseline of the same run.

1. ``throughput``: update tokens/s of ``mgpo train`` on the tiny recipe with one process, two DDP
   processes and two FSDP2 processes (gloo, CPU). Each run trains ``--steps`` steps of
   ``8 prompts x 8 samples`` with responses of up to 16 tokens; the figure is trained tokens over
   the update time of the steps after the first (which pays one-off costs). Then the step time
   split into its phases (median seconds over the same steps): every process rolls out and scores
   its half of the prompts (under FSDP2 the hf engines generate in lockstep), so the rollout
   column compares 2 processes with 1.
2. ``memory``: peak host memory of one forward + backward of the teacher-forced log-probs, through
   hidden states and the chunked ``lm_head`` (the trainer's path) against full-vocabulary logits
   then the chunked log-softmax (the path before). Each variant runs in its own process, on a
   small random model with Qwen2.5-VL's real vocabulary (151,936 tokens), 4 sequences of
   ``--width`` response tokens; the figure is the peak resident set size during the pass minus the
   resident size before it.

    python benchmarks/train_scale.py                 # both
    python benchmarks/train_scale.py memory --width 1024

Timings on a shared machine are noisy: compare the ratios, and rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOWEL = (
    "def vowel(response, answer, **kwargs):\n"
    "    return {'reward': float(response.strip()[:1].lower() in 'aeiou')}\n"
)

# 8 prompts x 8 samples, responses of up to 16 tokens, 8 sequences per forward/backward
SETTINGS = ["data.val=null", "rollout.batch_prompts=8", "rollout.n=8", "rollout.max_new_tokens=16"]
SETTINGS += ["optim.micro_batch=8", "trainer.save_every=0", "rollout.micro_batch=8"]


def mgpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "mgpo_cli", *args]


def launch(processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return mgpo(*args)
    start = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
    start += ["--num_processes", str(processes), "--mixed_precision", "no", "-m", "mgpo_cli"]
    return [sys.executable, *start, *args]


PHASES = ("rollout_s", "score_s", "logprobs_s", "update_s", "weight_sync_s", "step_time_s")


def later_steps(run: Path) -> list[dict]:
    """Metrics of every step after the first (which pays one-off costs)."""
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]


def update_tokens_per_s(run: Path) -> float:
    return statistics.median(r["tokens"] / r["update_s"] for r in later_steps(run))


def phases(run: Path) -> dict[str, float]:
    return {key: statistics.median(r.get(key, 0.0) for r in later_steps(run)) for key in PHASES}


def throughput(steps: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="train-scale-") as folder:
        root = Path(folder)
        subprocess.run(
            mgpo("prepare", "shapes", "--size", "64", "--out", str(root / "data")),
            env=env,
            check=True,
            capture_output=True,
        )
        (root / "vowel.py").write_text(VOWEL)
        settings = SETTINGS + [f"score.reward={root / 'vowel.py'}:vowel"]
        base = ["train", "--recipe", "tiny", "--data", str(root / "data"), "--steps", str(steps)]
        base += [arg for setting in settings for arg in ("--set", setting)]
        results, split = {}, {}
        for name, processes, strategy in (
            ("1 process", 1, "ddp"),
            ("2 processes, DDP", 2, "ddp"),
            ("2 processes, FSDP2", 2, "fsdp"),
        ):
            run = root / name.replace(" ", "-").replace(",", "")
            args = [*base, "--set", f"trainer.strategy={strategy}", "--run-dir", str(run)]
            subprocess.run(launch(processes, args), env=env, check=True, capture_output=True)
            results[name] = update_tokens_per_s(run)
            split[name] = phases(run)
    baseline = results["1 process"]
    for name, value in results.items():
        print(f"{name:20s} {value:10.1f} update tokens/s   x{value / baseline:.2f}")
    print(f"\nseconds per step (median of steps 2-{steps}):")
    print(f"{'':20s} " + " ".join(f"{key.removesuffix('_s'):>11s}" for key in PHASES))
    for name, values in split.items():
        print(f"{name:20s} " + " ".join(f"{values[key]:11.3f}" for key in PHASES))
    one = split["1 process"]["rollout_s"]
    for name, values in split.items():
        print(f"rollout {name:20s} x{values['rollout_s'] / one:.2f} of 1 process")


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def memory_pass(path: str, width: int) -> None:
    """One forward + backward in this process; prints the peak RSS increase in bytes."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from stages.models.loading import load_policy
    from stages.models.logprobs import forward_inputs
    from stages.train.forward import LogprobModel, response_logprobs
    from stages.train.logprobs import logprobs_from_logits

    torch.set_num_threads(1)
    _, io = load_policy("tiny")
    data = json.loads((ROOT / "stages/models/configs/qwen2_5_vl_3b.json").read_text())
    data.pop("_comment")
    data.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2)
    data.update(num_attention_heads=4, num_key_value_heads=2)
    data["rope_scaling"] = {"type": "mrope", "mrope_section": [8, 12, 12]}
    data["vision_config"].update(depth=1, hidden_size=64, intermediate_size=64, num_heads=2)
    data["vision_config"].update(out_hidden_size=256)
    data["image_token_id"] = io.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.for_model(**data))
    rows = [{"prompt": f"Question {i}: what is x?", "images": []} for i in range(4)]
    responses = [[int(t) for t in torch.randint(20, 400, (width,))] for _ in rows]
    before = _rss_bytes()
    if path == "hidden":
        result = response_logprobs(
            LogprobModel(model), io, rows, responses, device=torch.device("cpu")
        )
        logp, entropy = result.logp, result.entropy
    else:  # full-vocabulary logits, then the chunked log-softmax (the trainer's path before)
        batch = io.encode(rows, responses)
        out = model(**forward_inputs(batch), use_cache=False, logits_to_keep=width + 1)
        targets = batch.inputs["input_ids"][:, -width:]
        logp, entropy = logprobs_from_logits(out.logits[:, -(width + 1) : -1], targets)
    (logp.sum() + entropy.sum()).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"path": path, "peak_increase": peak - before, "rss_before": before}))


def memory(width: int) -> None:
    results = {}
    for path in ("logits", "hidden"):
        out = subprocess.run(
            [sys.executable, __file__, "_memory_pass", path, str(width)],
            check=True,
            capture_output=True,
            text=True,
        )
        results[path] = json.loads(out.stdout.strip().splitlines()[-1])["peak_increase"]
    print(f"width {width}: 4 sequences, vocabulary 151,936, float32")
    for path, label in (("logits", "full logits"), ("hidden", "hidden states + chunks")):
        print(f"  {label:24s} peak +{results[path] / 2**20:8.1f} MiB")
    print(f"  ratio full / hidden: {results['logits'] / max(results['hidden'], 1):.1f}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_memory_pass":
        memory_pass(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="?", choices=("throughput", "memory", "both"), default="both")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    if args.what in ("memory", "both"):
        memory(args.width)
    if args.what in ("throughput", "both"):
        throughput(args.steps)


if __name__ == "__main__":
    main()
