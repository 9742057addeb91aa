"""Text-only prompts (no images) through prepare, rollout, score and train, on the built-in tiny
models: the text-only causal LM (``tiny-text``) and the image-text one (``tiny``), which must
accept a prompt without any image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import run_main
from stages.score import last_number
from stages.shards import open_shards

REWARD = f"{last_number.__file__}:last_number_reward"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text-only")
    result = run_main(
        "prepare", "arithmetic", "--size", "6", "--difficulty", "medium", "--out", root / "prompts"
    )
    assert result.returncode == 0, result.stderr
    return root / "prompts"


@pytest.mark.parametrize("model", ["tiny-text", "tiny"])
def test_rollout_and_score_a_text_only_prompt(
    model: str, prompts: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rollouts, scores = tmp_path / "rollouts", tmp_path / "scores"
    result = run_main(
        "rollout", "--prompts", prompts, "--model", model, "-n", "2", "--max-new-tokens", "6",
        "--dtype", "float32", "--device", "cpu", "--out", rollouts,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(open_shards(rollouts, "rollouts").iter_rows())
    assert len(rows) == 12 and {r["sample"] for r in rows} == {0, 1}
    assert all(1 <= len(r["response_ids"]) == len(r["logprobs"]) <= 6 for r in rows)
    assert all(lp <= 0 for r in rows for lp in r["logprobs"])
    result = run_main("score", "--rollouts", rollouts, "--reward", REWARD, "--out", scores)
    assert result.returncode == 0, result.stderr
    scored = {(s["prompt_id"], s["sample"]): s for s in open_shards(scores, "scores").iter_rows()}
    answers = {p["id"]: p["answer"] for p in open_shards(prompts, "prompts").iter_rows()}
    for row in rows:  # every score is the reward function's verdict on that response
        expected = last_number.last_number_reward(row["response"], answers[row["prompt_id"]])
        got = scored[(row["prompt_id"], row["sample"])]
        assert got["reward"] == pytest.approx(expected["reward"])
        assert got["extracted"] == expected["extracted"]


def test_text_only_prompt_encodes_without_vision_tokens(prompts: Path, tiny_policy) -> None:
    """The image-text model sees a text-only row as the text model does: no vision block."""
    from stages.models.loading import load_policy
    from stages.shards import prompt_row

    row = prompt_row(next(iter(open_shards(prompts, "prompts").iter_rows())))
    assert row["images"] == []
    _, vision_io = tiny_policy
    _, text_io = load_policy("tiny-text", dtype="float32")
    assert vision_io.prompt_text(row) == text_io.prompt_text(row)
    assert "<|vision_start|>" not in vision_io.prompt_text(row)
    batch = vision_io.encode([row])
    assert "pixel_values" not in batch.inputs
    assert torch.equal(batch.inputs["input_ids"], text_io.encode([row]).inputs["input_ids"])


@pytest.mark.slow
def test_train_two_steps_on_text_only_prompts(prompts: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_main(
        "train", "--recipe", "tiny", "--model", "tiny-text", "--data", prompts,
        "--val-data", prompts, "--run-dir", run, "--steps", "2", "--overwrite",
        "--set", f"score.reward={REWARD}", "--set", "rollout.batch_prompts=3",
        "--set", "rollout.n=4", "--set", "rollout.max_new_tokens=4", "--set", "trainer.val_every=2",
        "--set", "optim.micro_batch=12",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert "val_accuracy" in metrics[0] and "val_accuracy" in metrics[-1]
    assert metrics[1]["samples_trained"] == 12
    assert (run / "final" / "config.json").is_file()
