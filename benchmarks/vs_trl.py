"""Seconds per GRPO step, ours against TRL's ``GRPOTrainer``, measured in the same run.

Both trainers train the built-in tiny Qwen2.5-VL model (the same folder, ``tiny_model_path()``)
on the built-in ``shapes`` train split (with its images), with the same prompts per step, samples
per prompt, maximum response length, reward (``short_answer``, format weight 0.1), GRPO loss
(per-sequence token mean, then mean over sequences; clip 0.2 / 0.2; no KL), learning rate,
weight decay, gradient clipping, optimizer steps per rollout batch and micro-batch size, on one
CPU process with one compute thread. Runs alternate (ours, TRL, ours, TRL...); in each run the
first step (warm-up) is left out and the rest give per-step times; the report is the median over
all repeats and the ratio ours / TRL (below 1: we are faster).

TRL is installed from PyPI into a folder of its own (``--target``, default
``$MGPO_CACHE/trl-site``) that only the TRL side puts first on its ``sys.path``: both sides run the
very same interpreter, torch and transformers, whether that interpreter is a venv (the README's)
or not. (A ``--system-site-packages`` venv made from inside a venv would see the base
interpreter's packages, not the outer venv's, so it cannot share them.) ``pip install --dry-run``,
constrained by the repository's ``constraints.txt``, plans the install against this environment
first and refuses any TRL version that would replace torch, transformers or their companions;
then exactly the missing packages go into the folder. The TRL side is this file run with the
same python and that folder on ``PYTHONPATH`` (``--trl-worker``).

    OMP_NUM_THREADS=1 python benchmarks/vs_trl.py                 # tiny recipe: 16 prompts x 16, 1 token
    OMP_NUM_THREADS=1 python benchmarks/vs_trl.py --max-new-tokens 16 --steps 6 --repeats 2

One "step" is one rollout batch (``prompts`` x ``n`` samples) and the ``mini_batches`` optimizer
steps taken on it; for TRL that is ``steps_per_generation`` optimizer steps
(``generation_batch_size = prompts * n``). Per-phase times come from our ``metrics.jsonl`` and,
for TRL, from its own profiling hooks (``transformers.generate``, ``_calculate_rewards``, the old
log-prob pass inside ``_generate_and_score_completions``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import REPO, breakdown, child_env, prepare_data, run_ours  # noqa: E402

CONSTRAINTS = REPO / "constraints.txt"  # the versions the suite passed with
TRL_SPEC = "trl==1.16.0"  # tested with torch 2.13.0 and transformers 5.19
# What the TRL venv must take from the global environment, never install over it.
PROTECTED = {
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "huggingface-hub",
    "numpy",
    "pillow",
    "pyarrow",
}
PHASES = ("rollout_s", "score_s", "logprobs_s", "update_s", "other_s")


# ----------------------------------------------------------------------------- settings


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The one set of numbers both trainers are given (the tiny recipe's, unless overridden)."""
    return {
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "lr": args.lr,
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "mini_batches": args.mini_batches,
        "micro_batch": args.prompts * args.n // args.mini_batches,
        "eps": 0.2,
        "temperature": 1.0,
        "format_weight": 0.1,
        "seed": 0,
    }


def our_overrides(s: dict[str, Any]) -> dict[str, str]:
    return {
        "rollout.batch_prompts": str(s["prompts"]),
        "rollout.n": str(s["n"]),
        "rollout.max_new_tokens": str(s["max_new_tokens"]),
        "rollout.micro_batch": str(s["prompts"] * s["n"]),
        "rollout.temperature": str(s["temperature"]),
        "rollout.top_p": "1.0",
        "optim.lr": str(s["lr"]),
        "optim.weight_decay": str(s["weight_decay"]),
        "optim.grad_clip": str(s["grad_clip"]),
        "optim.epochs": "1",
        "optim.mini_batches": str(s["mini_batches"]),
        "optim.micro_batch": str(s["micro_batch"]),
        "optim.schedule": "constant",
        "optim.warmup_steps": "0",
        "algo.eps_low": str(s["eps"]),
        "algo.eps_high": str(s["eps"]),
        "algo.kl_coef": "0.0",
        "score.reward": "short_answer",
        "score.format_weight": str(s["format_weight"]),
        "trainer.seed": str(s["seed"]),
        "trainer.cpu_threads": "1",
        "trainer.device": "cpu",
        "model.dtype": "float32",
    }


# ----------------------------------------------------------------------------- TRL venv


def ensure_trl(target: Path, spec: str) -> Path:
    """A folder holding ``spec`` and whatever it needs that this environment lacks (for
    ``PYTHONPATH``); refuses to install anything over the shared packages."""
    marker = target / ".installed-spec"
    if marker.is_file() and marker.read_text() == spec:
        return target
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    constraints = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.is_file() else []
    dry = subprocess.run(
        [*pip, "--dry-run", "--quiet", "--report", "-", *constraints, spec],
        capture_output=True,
        text=True,
    )
    if dry.returncode != 0:
        raise SystemExit(f"pip cannot resolve {spec}:\n{dry.stderr[-2000:]}")
    plan = {
        i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
        for i in json.loads(dry.stdout)["install"]
    }
    clash = sorted(f"{name}=={version}" for name, version in plan.items() if name in PROTECTED)
    if clash:
        raise SystemExit(
            f"{spec} would install {', '.join(clash)} over the shared environment; "
            "pin a TRL version that accepts the installed ones (--trl trl==X.Y.Z)"
        )
    print(f"installing into {target}: {', '.join(f'{k}=={v}' for k, v in plan.items())}")
    shutil.rmtree(target, ignore_errors=True)
    pinned = [f"{name}=={version}" for name, version in plan.items()]
    subprocess.run([*pip, "--quiet", "--no-deps", "--target", str(target), *pinned], check=True)
    marker.write_text(spec)
    return target


# ----------------------------------------------------------------------------- the TRL side


def image_only_processor(path: str):
    """A stock ``Qwen2_5_VLProcessor`` without its video processor.

    The video processor needs torchvision, which this environment lacks, so ``AutoProcessor``
    cannot load the tiny model's folder; TRL needs a ``ProcessorMixin`` (not our own
    image-only processor) to treat the model as a VLM. Images go through the same PIL image
    processor and chat template our trainer uses (checked token for token in ``trl_worker``).
    """
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any):
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    template = (Path(path) / "chat_template.jinja").read_text()
    return ImageOnlyProcessor(
        image_processor=AutoImageProcessor.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        video_processor=None,
        chat_template=template,
    )


def trl_dataset(data: str) -> tuple[Any, dict]:
    """Our prompt shards as a TRL conversational dataset with an ``images`` column."""
    from datasets import Dataset

    from stages.shards import open_shards, prompt_row

    rows = [prompt_row(r) for r in open_shards(data, "prompts").iter_rows()]
    for row in rows:  # TRL puts the images before the text: so do the shapes prompts
        if not row["prompt"].startswith("<image>") or row["prompt"].count("<image>") != 1:
            raise SystemExit(f"{row['id']}: expected one leading <image> (shapes prompts)")
    table = {
        "prompt": [[{"role": "user", "content": r["prompt"][len("<image>") :]}] for r in rows],
        "images": [r["images"] for r in rows],
        "answer": [r["answer"] for r in rows],
        "choices": [r["choices"] for r in rows],
    }
    return Dataset.from_dict(table), rows[0]


def check_same_prompt_tokens(path: str, processor: Any, row: dict) -> None:
    """TRL's prompt encoding must equal ours, or the two runs do not train on the same inputs."""
    from trl.data_utils import prepare_multimodal_messages

    from stages.models.loading import load_policy

    _, io = load_policy(path, dtype="float32")
    ours = io.encode([row]).inputs["input_ids"][0].tolist()
    messages = prepare_multimodal_messages(
        [{"role": "user", "content": row["prompt"][len("<image>") :]}], images=row["images"]
    )
    theirs = processor.apply_chat_template(
        [messages], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"][0]
    if list(theirs) != ours:
        raise SystemExit("TRL and mgpo encode the first prompt differently: not comparable")


def total(
    records: list[tuple[str, int, float, bool]], name: str, generating: bool | None = None
) -> float:
    """Seconds TRL's timer ``name`` took (only inside / outside generation when asked)."""
    return sum(d for n, _, d, g in records if n == name and (generating is None or g == generating))


def trl_worker(config_path: str) -> None:
    """Run TRL's GRPOTrainer with the settings in ``config_path``; write per-step times there."""
    import torch

    torch.set_num_threads(1)
    import transformers
    import trl
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from stages.score.short_answer import short_answer_reward

    job = json.loads(Path(config_path).read_text())
    s, steps = job["settings"], job["steps"]
    records: list[tuple[str, int, float, bool]] = []  # name, global step, seconds, in generation
    state = {"generating": False}

    def record(self: Any, duration: float) -> None:
        name = self.name.rsplit(".", 1)[-1]
        records.append((name, int(self.step or 0), duration, state["generating"]))

    profiling.ProfilingContext._log_metrics = record  # TRL's own timers, kept in memory

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> Any:
            state["generating"] = True
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                state["generating"] = False

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, train_state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, args, train_state, control, **kwargs):
            ends.append(time.perf_counter())

    def shapes_reward(completions, answer, choices, **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [
            short_answer_reward(t, a, choices=c, format_weight=s["format_weight"])["reward"]
            for t, a, c in zip(texts, answer, choices, strict=True)
        ]

    path = job["model"]
    processor = image_only_processor(path)
    dataset, first = trl_dataset(job["data"])
    check_same_prompt_tokens(path, processor, first)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    per_round = s["mini_batches"]
    args = GRPOConfig(
        output_dir=job["out"],
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        seed=s["seed"],
        max_steps=steps * per_round,
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=s["weight_decay"],
        max_grad_norm=s["grad_clip"],
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        per_device_train_batch_size=s["micro_batch"],
        gradient_accumulation_steps=1,
        steps_per_generation=per_round,
        num_generations=s["n"],
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        epsilon=s["eps"],
        epsilon_high=s["eps"],
        loss_type="grpo",
        scale_rewards="group",
        importance_sampling_level="token",
        mask_truncated_completions=False,
        shuffle_dataset=True,
        log_completions=False,
        logging_steps=per_round,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Timed(
        model=model,
        reward_funcs=[shapes_reward],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[Clock()],
    )
    if trainer.args.generation_batch_size != s["prompts"] * s["n"]:
        raise SystemExit(f"TRL generation batch {trainer.args.generation_batch_size} != ours")
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    rounds = []
    for r in range(steps):
        step_time = ends[(r + 1) * per_round] - ends[r * per_round]
        mine = [x for x in records if r * per_round <= x[1] < (r + 1) * per_round]

        prepare = total(mine, "_prepare_inputs")
        phases = {
            "rollout_s": total(mine, "generate"),
            "score_s": total(mine, "_calculate_rewards"),
            "logprobs_s": total(mine, "_get_per_token_logps_and_entropies", generating=True),
        }
        phases["other_s"] = prepare - sum(phases.values())
        phases["update_s"] = step_time - prepare
        rounds.append({"step": r + 1, "step_time_s": step_time, **phases})
    lengths = [
        log["completions/mean_length"]
        for log in trainer.state.log_history
        if "completions/mean_length" in log
    ]
    result = {
        "rounds": rounds,
        "mean_length": statistics.median(lengths[1:] or lengths) if lengths else float("nan"),
        "wall_s": wall,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    Path(job["result"]).write_text(json.dumps(result))


def run_trl(
    site: Path, data: Path, model: str, folder: Path, steps: int, s: dict[str, Any]
) -> tuple[dict, float]:
    job = {
        "settings": s,
        "steps": steps,
        "data": str(data),
        "model": model,
        "out": str(folder / "trl-out"),
        "result": str(folder / "trl-result.json"),
    }
    config = folder / "trl-job.json"
    config.write_text(json.dumps(job))
    started = time.perf_counter()
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"TRL run failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
        )
    return json.loads(Path(job["result"]).read_text()), time.perf_counter() - started


# ----------------------------------------------------------------------------- report


def medians(rows: list[dict]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in (*PHASES, "step_time_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help="steps per run (first = warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer, alternating")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=1)
    parser.add_argument("--mini-batches", type=int, default=2, help="optimizer steps per step")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--trl", default=TRL_SPEC, help="pip requirement for TRL")
    parser.add_argument(
        "--target", type=Path, help="folder TRL is installed into (default $MGPO_CACHE/trl-site)"
    )
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (step 1 is warm-up)")
    if (args.prompts * args.n) % args.mini_batches:
        raise SystemExit("--prompts x --n must divide into --mini-batches")
    from stages.models.tiny import cache_root, tiny_model_path

    site = ensure_trl(args.target or cache_root() / "trl-site", args.trl)
    s = settings_from(args)
    model = str(tiny_model_path())
    ours_rows: list[dict] = []
    trl_rows: list[dict] = []
    walls: dict[str, list[float]] = {"ours": [], "trl": []}
    lengths: dict[str, list[float]] = {"ours": [], "trl": []}
    pair_ratios: list[float] = []  # each repeat's median ours / the next TRL run's median
    versions: dict = {}
    with tempfile.TemporaryDirectory(prefix="mgpo-vs-trl-") as tmp:
        folder = Path(tmp)
        data = prepare_data(folder)
        for k in range(args.repeats):
            rows, wall = run_ours(data, folder / f"ours-{k}", args.steps, our_overrides(s))
            b = breakdown(rows)
            ours_rows += [
                {**r, "other_s": r["step_time_s"] - sum(r[p] for p in PHASES[:4])} for r in rows[1:]
            ]
            walls["ours"].append(wall)
            lengths["ours"] += [r["response_length_mean"] for r in rows[1:]]
            print(
                f"ours  run {k + 1}: {b['step_time_s']:.3f} s/step (median), command {wall:.1f} s",
                flush=True,
            )
            result, wall = run_trl(site, data, model, folder, args.steps, s)
            trl_rows += result["rounds"][1:]
            walls["trl"].append(wall)
            lengths["trl"].append(result["mean_length"])
            versions = {k: result[k] for k in ("trl", "transformers", "torch")}
            t = statistics.median(r["step_time_s"] for r in result["rounds"][1:])
            pair_ratios.append(b["step_time_s"] / t)
            print(f"TRL   run {k + 1}: {t:.3f} s/step (median), command {wall:.1f} s", flush=True)
    ours, theirs = medians(ours_rows), medians(trl_rows)
    print(
        f"\n{args.prompts} prompts x n={args.n}, max_new_tokens={args.max_new_tokens}, "
        f"{args.mini_batches} optimizer steps per step, tiny Qwen2.5-VL, CPU, 1 thread; "
        f"TRL {versions['trl']}, transformers {versions['transformers']}, torch {versions['torch']}"
    )
    print(f"median over {len(ours_rows)} (ours) / {len(trl_rows)} (TRL) steps after warm-up")
    print(
        "ours: rollout = prompt encoding + generate + rollout shards, other = step - 4 phases;\n"
        "TRL: rollout = generate() only, other = prompt/image encoding, padding, advantages;\n"
        "update = the optimizer steps (TRL: step time - its _prepare_inputs)\n"
    )
    print(f"  {'phase':<10} {'ours s':>8} {'TRL s':>8} {'ours/TRL':>9}")
    for key in (*PHASES, "step_time_s"):
        ratio = ours[key] / theirs[key] if theirs[key] > 1e-9 else float("nan")
        print(f"  {key[:-2]:<10} {ours[key]:>8.3f} {theirs[key]:>8.3f} {ratio:>9.2f}")
    print(
        f"\n  seconds per step, ours / TRL: {ours['step_time_s'] / theirs['step_time_s']:.2f} "
        f"(goal: below 1)"
    )
    print(
        "  per repeat (ours run k / TRL run k): "
        + ", ".join(f"{r:.2f}" for r in pair_ratios)
        + f"; median {statistics.median(pair_ratios):.2f}"
    )
    print(
        f"  mean response tokens (median over steps): ours {statistics.median(lengths['ours']):.2f},"
        f" TRL {statistics.median(lengths['trl']):.2f}"
    )
    print(
        f"  whole command incl. start-up, median: ours {statistics.median(walls['ours']):.1f} s, "
        f"TRL {statistics.median(walls['trl']):.1f} s"
    )


if __name__ == "__main__":
    main()
