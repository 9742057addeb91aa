"""The loss family inside the trainer: every loss trains, the shared options reach the loss with
step-wide values (the entropy threshold over every micro-batch, the engine's log-probs, MC-GRPO
leaving medians out), bad options are one line, and ``--list-algos`` / README list every loss.

Runs use the tiny model and 3-token responses (so token-level options have tokens to act on).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from helpers import VOWEL_REWARD, assert_user_error, run_cli, run_main
from stages.train import algos
from stages.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "data.val": "null",
    "rollout.batch_prompts": 4,
    "rollout.n": 5,
    "rollout.max_new_tokens": 3,
    "optim.micro_batch": 20,
    "optim.mini_batches": 1,
    "trainer.save_every": 0,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("train-algos")
    result = run_cli("prepare", "shapes", "--size", "8", "--out", root / "train", cwd=root)
    assert result.returncode == 0, result.stderr
    (root / "vowel.py").write_text(VOWEL_REWARD)
    return root


def build_config(data_dir: Path, **overrides) -> TrainConfig:
    from stages.config import apply_overrides, build, load_recipe, parse_override

    settings = {
        **SETTINGS,
        "data.train": str(data_dir / "train"),
        "score.reward": f"{data_dir / 'vowel.py'}:vowel",
        **overrides,
    }
    pairs = [parse_override(f"{k}={v}") for k, v in settings.items()]
    return build(TrainConfig, apply_overrides(load_recipe("tiny"), pairs))


def updates(trainer, batch, configs: list[TrainConfig]) -> list[dict]:
    """The update of ``batch`` under each config, every one from the same starting weights."""
    policy = trainer.policy
    model = {k: v.clone() for k, v in policy.model.state_dict().items()}
    optim = copy.deepcopy(policy.optimizer.state_dict())
    out = []
    for config in configs:
        policy.model.load_state_dict(model)
        policy.optimizer.load_state_dict(optim)
        policy.opt_steps = 0
        policy.config = config
        metrics = trainer.update(batch)
        moved = any(not torch.equal(model[k], v) for k, v in policy.model.state_dict().items())
        out.append({**metrics, "moved": moved})
    return out


def test_every_loss_and_option_trains_and_the_entropy_threshold_is_step_wide(
    data_dir: Path, tmp_path: Path
) -> None:
    from stages.train.loop import Trainer

    torch.set_num_threads(1)
    base = build_config(data_dir)
    trainer = Trainer(base, tmp_path)
    batch, _ = trainer.collect(tmp_path / "step-1")
    configs = [build_config(data_dir, **{"algo.name": name}) for name in algos.ALGORITHMS]
    masked = {"algo.name": "dapo", "algo.entropy_top": 0.5}
    configs += [
        build_config(data_dir, **masked),
        build_config(data_dir, **masked, **{"optim.micro_batch": 3}),  # other micro-batches
        build_config(data_dir, **{"algo.rollout_correction": "token_truncate"}),
        build_config(data_dir, **{"algo.baseline": "median", "algo.scale_rewards": "batch"}),
        build_config(
            data_dir, **{"algo.uncertainty": "entropy", "algo.selection": "paper", "algo.alpha": 1}
        ),
    ]
    results = updates(trainer, batch, configs)
    trainer.close()
    for config, metrics in zip(configs, results, strict=True):
        assert metrics["moved"], config.algo
        assert all(v == v and abs(v) != float("inf") for v in metrics.values() if v is not True)
    mask_one, mask_many = results[len(algos.ALGORITHMS)], results[len(algos.ALGORITHMS) + 1]
    # the same threshold and kept tokens whatever the micro-batch split (one step-wide pass); the
    # entropies themselves come from forwards of other batch shapes, equal to float32 rounding
    assert mask_one["entropy_threshold"] == pytest.approx(mask_many["entropy_threshold"], rel=1e-6)
    assert mask_one["tokens"] == mask_many["tokens"] < mask_one["tokens_valid"]
    assert mask_one["loss"] == pytest.approx(mask_many["loss"], rel=1e-5)
    assert mask_one["entropy_kept_frac"] >= 0.5
    corrected = results[-3]
    assert 0.0 < corrected["rollout_weight_mean"] <= 2.0  # hf engine: trainer and engine agree
    assert corrected["rollout_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert results[-2]["samples_left_out"] == 4.0  # one median of each group of 5
    assert results[-1]["blend_frac"] > 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--algo", "sapo", "--set", "algo.tau_pos=0"], "tau_pos must be > 0"),
        (["--algo", "grpo", "--set", "algo.entropy_top=1.5"], "entropy_top must be in (0, 1]"),
        (["--set", "algo.entropy_top=0.2"], "mgpo has no option entropy_top"),
        (["--set", "algo.rollout_correction=tokens"], "rollout_correction must be one of"),
        (["--algo", "gmpo", "--set", "algo.rollout_correction=token_mask"], "sequence_mask"),
        (["--set", "algo.clip_ratio_c=0.5"], "clip_ratio_c"),
        (["--set", "algo.scale_rewards=team"], "algo.scale_rewards 'team'"),
        (["--set", "algo.baseline=mode"], "algo.baseline 'mode'"),
        (["--set", "algo.selection=paper", "--alpha", "dyn"], "fixed-alpha"),
    ],
)
def test_bad_loss_options_are_one_line_errors(tmp_path: Path, args, fragment) -> None:
    assert_user_error(run_main("train", "--recipe", "tiny", *args, cwd=tmp_path), fragment)


def test_list_algos_shows_every_loss_with_options_and_paper(tmp_path: Path) -> None:
    result = run_main("train", "--list-algos", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for entry in algos.catalog():
        at = lines.index(entry["name"])
        assert lines[at + 1] == f"  loss:    {entry['formula']}"
        assert lines[at + 2] == f"  paper:   {entry['paper']}"
        for key, default in entry["options"].items():
            assert f"{key}={default}" in lines[at + 3]
    sapo = lines[lines.index("sapo") + 3]
    assert "tau_pos=1.0, tau_neg=1.05" in sapo and "entropy_top=None" in sapo


def test_readme_table_has_every_loss_with_its_formula() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in readme.splitlines()
        if line.startswith("| `")
    }
    for entry in algos.catalog():
        assert entry["name"] in rows, entry["name"]
        assert f"`{entry['formula']}`" in rows[entry["name"]], entry["name"]


def test_show_config_resolves_loss_options(tmp_path: Path) -> None:
    result = run_main(
        "train", "--recipe", "tiny", "--algo", "cispo", "--set", "algo.rollout_correction=token_mask",
        "--show-config", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    algo = json.loads(result.stdout)["algo"]
    assert algo["name"] == "cispo" and algo["rollout_correction"] == "token_mask"
