"""`mgpo train`: the on-policy loop end to end on the tiny model, resume, bad input (several
processes, FSDP and precision: test_train_scale.py).

Runs are tiny (4 prompts x 4 samples, 1-token responses) so each step takes about a second; the
short_answer reward with some format credit makes rewards non-zero from the first step, so the
loss and gradients are not trivially zero.
"""

from __future__ import annotations

import copy
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import VOWEL_REWARD, assert_user_error, cli_env, run_cli, run_main
from stages.errors import MgpoError
from stages.train.checkpoint import load_checkpoint, save_checkpoint
from stages.train.config import TrainConfig
from stages.train.data_order import Position, take
from stages.train.schedule import lr_at

# A small run: 4 prompts x 4 samples, 1-token responses, a checkpoint every step.
SMALL_SETTINGS = {
    "data.val": "null",
    "rollout.batch_prompts": 4,
    "rollout.n": 4,
    "rollout.max_new_tokens": 1,
    "optim.micro_batch": 3,
    "optim.mini_batches": 2,
    "trainer.save_every": 1,
}


def small_args(root: Path) -> list[str]:
    settings = {**SMALL_SETTINGS, "score.reward": f"{root / 'vowel.py'}:vowel"}
    args = ["--recipe", "tiny", "--data", str(root / "train")]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


TIMING_KEYS = {
    "rollout_s",
    "score_s",
    "logprobs_s",
    "update_s",
    "step_time_s",
    "trainer_tokens_per_s",
    "weight_sync_s",
}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    result = run_cli("prepare", "shapes", "--size", "16", "--out", root / "train", cwd=root)
    assert result.returncode == 0, result.stderr
    (root / "vowel.py").write_text(VOWEL_REWARD)
    return root


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


# ----------------------------------------------------------------------------- pure pieces


def test_lr_schedule_warmup_then_decay() -> None:
    config = TrainConfig()
    from stages.config import build

    cosine = build(
        TrainConfig,
        {"optim": {"lr": 1.0, "warmup_steps": 2, "schedule": "cosine"}, "trainer": {"steps": 10}},
    )
    assert [lr_at(s, cosine) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, cosine) == pytest.approx(1.0)
    assert lr_at(6, cosine) == pytest.approx(0.5)
    assert lr_at(5, config) == config.optim.lr  # constant


def test_data_order_is_resumable_and_covers_each_epoch() -> None:
    ids = [f"p{i}" for i in range(7)]
    position, taken = Position(), []
    for _ in range(5):
        batch, position = take(ids, position, 3, seed=1, shuffle=True)
        taken.append(batch)
    # Restarting from any saved position gives the same continuation.
    replay, pos = [], Position()
    for _ in range(2):
        batch, pos = take(ids, pos, 3, seed=1, shuffle=True)
    for _ in range(3):
        batch, pos = take(ids, pos, 3, seed=1, shuffle=True)
        replay.append(batch)
    assert replay == taken[2:]
    flat = [i for b in taken for i in b]
    assert sorted(flat[:7]) == sorted(ids) and sorted(flat[7:14]) == sorted(ids)


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path: Path) -> None:
    from stages.train.dist import setup

    processes = setup("cpu")
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    random.seed(5)
    torch.manual_seed(5)
    state = {"position": {"epoch": 1, "offset": 2}}
    path = save_checkpoint(tmp_path, 3, processes, model, optimizer, state, keep_last=2)
    expected_torch, expected_py = torch.rand(3), random.random()
    fresh_model = torch.nn.Linear(4, 3)
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=0.5)
    state = load_checkpoint(path, processes, fresh_model, fresh)
    assert torch.equal(fresh_model.weight, model.weight)
    assert state["step"] == 3 and state["position"] == {"epoch": 1, "offset": 2}
    for a, b in zip(
        fresh.state_dict()["state"].values(), optimizer.state_dict()["state"].values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert fresh.param_groups[0]["lr"] == 0.1
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    assert not any(p.suffix in (".pkl", ".bin", ".pt") for p in path.iterdir())
    # A checkpoint of another model is one clear error, not a partial load.
    other = torch.nn.Linear(4, 2)
    with pytest.raises(MgpoError, match="weight has shape"):
        load_checkpoint(path, processes, other, torch.optim.AdamW(other.parameters()))
    layout = json.loads((path / "layout.json").read_text())
    (path / "layout.json").write_text(json.dumps({**layout, "processes": 2}))
    with pytest.raises(MgpoError, match="written by 2 processes; resume it with the same"):
        load_checkpoint(path, processes, fresh_model, fresh)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_run_dir_metrics_and_export(shapes_dir: Path, tiny_model_dir: Path) -> None:
    run = shapes_dir / "run-basic"
    result = run_cli(
        "train",
        *small_args(shapes_dir),
        "--steps",
        "2",
        "--run-dir",
        run,
        cwd=shapes_dir,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == [1, 2]
    for key in (
        "reward_mean",
        "reward_std",
        "accuracy",
        "response_length_mean",
        "entropy",
        "clip_frac_low",
        "clip_frac_high",
        "ratio_spread",
        "blend_frac",
        "zero_advantage_group_frac",
        "grad_norm",
        "lr",
        "loss",
    ):
        assert key in metrics[0], key
    for step in (1, 2):
        step_dir = run / "steps" / f"step-{step:06d}"
        assert (step_dir / "rollouts" / "manifest.json").is_file() and (
            step_dir / "scores" / "manifest.json"
        ).is_file()
    assert json.loads((run / "config.json").read_text())["algo"]["name"] == "mgpo"
    assert (run / "final" / "config.json").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000001", "step-000002"]  # keep_last 2
    # The exported policy loads like any local model and is not the initial one.
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    final = _weights(run)
    assert final.keys() == start.keys()
    assert any(not torch.equal(final[k], start[k]) for k in final)


def test_on_policy_step_reuses_its_own_logprobs_and_matches_a_frozen_forward(
    shapes_dir: Path, tmp_path: Path
) -> None:
    """With one optimizer step per rollout the old log-probs come from the update's own forward
    (detached) instead of a separate no-grad pass; the update must be the same either way."""
    from stages.config import apply_overrides, build, load_recipe, parse_override
    from stages.train.loop import Trainer

    settings = {**SMALL_SETTINGS, "optim.mini_batches": 1, "optim.micro_batch": 16}
    settings["score.reward"] = f"{shapes_dir / 'vowel.py'}:vowel"
    settings["data.train"] = str(shapes_dir / "train")
    overrides = [parse_override(f"{k}={v}") for k, v in settings.items()]
    config = build(TrainConfig, apply_overrides(load_recipe("tiny"), overrides))
    torch.set_num_threads(1)
    trainer = Trainer(config, tmp_path)
    batch, _ = trainer.collect(tmp_path / "step-1")
    start_model = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    start_optim = copy.deepcopy(trainer.policy.optimizer.state_dict())

    reused = trainer.update(batch)
    weights_reused = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    trainer.policy.model.load_state_dict(start_model)
    trainer.policy.optimizer.load_state_dict(start_optim)
    trainer.policy.opt_steps = 0
    frozen = trainer.update(batch, frozen_old=True)
    trainer.close()

    assert reused["ratio_min"] == reused["ratio_max"] == 1.0  # exactly on-policy
    assert reused["loss"] == pytest.approx(frozen["loss"], abs=1e-6)
    assert reused["grad_norm"] == pytest.approx(frozen["grad_norm"], rel=1e-5)
    assert reused["engine_logprob_mismatch"] < 1e-5
    moved = [k for k in start_model if not torch.equal(start_model[k], weights_reused[k])]
    assert moved
    for key, value in trainer.policy.model.state_dict().items():
        assert torch.allclose(value, weights_reused[key], atol=1e-6), key


@pytest.mark.slow
def test_kill_during_a_step_then_resume_matches_uninterrupted(shapes_dir: Path) -> None:
    args = [*small_args(shapes_dir), "--steps", "4"]
    env = {"OMP_NUM_THREADS": "1"}
    straight = shapes_dir / "run-straight"
    assert run_cli("train", *args, "--run-dir", straight, cwd=shapes_dir, env=env).returncode == 0
    killed = shapes_dir / "run-killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "mgpo_cli", "train", *args, "--run-dir", str(killed)],
        cwd=shapes_dir,
        env=cli_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill -9 once step 3 has started (its rollouts exist) after step 2's checkpoint.
    deadline = time.time() + 240
    while (
        time.time() < deadline
        and not (killed / "steps" / "step-000003" / "rollouts" / "manifest.json").exists()
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    resumed = run_cli("train", *args, "--run-dir", killed, "--resume", cwd=shapes_dir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics(killed) == _metrics(straight)
    a, b = _weights(killed), _weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- bad input


def test_default_recipe_on_cpu_names_the_cpu_recipe(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    error = assert_user_error(
        run_main("train", "--algo", "mgpo", "--alpha", "dyn", cwd=tmp_path), "needs a GPU"
    )
    assert "--recipe tiny" in error


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "algo.alhpa=0.5"], "did you mean 'alpha'"),
        (["--set", "rollout.nn=2"], "unknown key 'rollout.nn'"),
        (["--alpha", "1.5"], "algo.alpha 1.5"),
        (["--alpha", "often"], "'dyn'"),
        (["--beta", "-0.1"], "algo.beta"),
        (["--algo", "ppo"], "algo.name 'ppo'"),
        (["--data", "missing-dir"], "missing-dir"),
        (["--set", "trainer.strategy=zero3"], "trainer.strategy 'zero3': expected ddp or fsdp"),
        (["--set", "model.dtype=fp16"], "loss scaling"),
        (["--set", "trainer.collective_timeout_s=0"], "trainer.collective_timeout_s"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_user_error(run_main("train", "--recipe", "tiny", *args, cwd=tmp_path), fragment)


def test_data_without_manifest_and_existing_run_are_refused(
    shapes_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "prompts"
    empty.mkdir()
    assert_user_error(
        run_main("train", "--recipe", "tiny", "--data", empty, cwd=tmp_path), "manifest.json"
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"note": "an older run"}))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = sorted(p.name for p in run.iterdir())
    args = ["train", *small_args(shapes_dir), "--run-dir", run]
    assert_user_error(run_main(*args, cwd=tmp_path), "--resume", "--overwrite")
    assert_user_error(run_main(*args, "--resume", cwd=tmp_path), "different config")
    assert sorted(p.name for p in run.iterdir()) == before
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.slow
def test_frozen_vision_tower_and_gradient_checkpointing(
    shapes_dir: Path, tiny_model_dir: Path
) -> None:
    run = shapes_dir / "run-frozen"
    args = [*small_args(shapes_dir), "--steps", "1", "--set", "model.freeze_vision=true"]
    args += ["--set", "model.gradient_checkpointing=true", "--run-dir", str(run)]
    result = run_cli("train", *args, cwd=shapes_dir, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    start, final = load_file(str(tiny_model_dir / "model.safetensors")), _weights(run)
    vision = [k for k in final if ".visual." in f".{k}"]
    assert vision and all(torch.equal(final[k], start[k]) for k in vision)
    assert any(not torch.equal(final[k], start[k]) for k in final if k not in vision)


@pytest.mark.slow
def test_dapo_keeps_only_groups_with_signal_and_gpg_resampling_is_bounded(shapes_dir: Path) -> None:
    env = {"OMP_NUM_THREADS": "1"}
    dapo = shapes_dir / "run-dapo"
    args = [*small_args(shapes_dir), "--steps", "1", "--algo", "dapo", "--run-dir", str(dapo)]
    assert run_cli("train", *args, cwd=shapes_dir, env=env).returncode == 0
    (metrics,) = _metrics(dapo)
    rounds = int(metrics["rollout_rounds"])
    assert 1 <= rounds <= 4  # 1 + rollout.max_resample_rounds (3)
    assert (
        metrics["groups_trained"] <= 4
        and metrics["samples_trained"] == 4 * metrics["groups_trained"]
    )
    groups = _kept_groups(dapo / "steps" / "step-000001", rounds)
    assert metrics["groups_trained"] == min(4, sum(not g for g in groups))
    # GPG with threshold 1.0 wants every group informative: it samples extra rounds, at most 3.
    gpg = shapes_dir / "run-gpg"
    args = [
        *small_args(shapes_dir),
        "--steps",
        "1",
        "--algo",
        "gpg",
        "--set",
        "algo.gpg_threshold=1.0",
    ]
    assert run_cli("train", *args, "--run-dir", gpg, cwd=shapes_dir, env=env).returncode == 0
    (metrics,) = _metrics(gpg)
    rounds = int(metrics["rollout_rounds"])
    groups = _kept_groups(gpg / "steps" / "step-000001", rounds)
    assert rounds == 4 or all(not g for g in groups[-4:])
    assert metrics["groups_trained"] == (sum(not g for g in groups) or len(groups))


def _kept_groups(step_dir: Path, rounds: int) -> list[bool]:
    """Per rolled-out group, in order: True when all its rewards are equal (no signal)."""
    from stages.train.samples import read_groups

    degenerate = []
    for r in range(rounds):
        prefix = "" if r == 0 else f"round{r}-"
        for group in read_groups(
            str(step_dir / f"{prefix}rollouts"), str(step_dir / f"{prefix}scores")
        ):
            degenerate.append(group.degenerate)
    return degenerate
