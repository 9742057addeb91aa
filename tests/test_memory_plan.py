"""The memory plan (``mgpo train --plan``): exact state bytes against a real model and a real
AdamW step, hand formulas for the published architectures, the activation estimate against the
bytes autograd really saves, and the refusal of a run that cannot fit."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from helpers import run_cli, run_main
from stages.config import apply_overrides, build, load_recipe, parse_override
from stages.errors import MgpoError
from stages.models.architecture import architecture
from stages.train import TrainConfig, human_bytes, plan_memory
from stages.train.memory_plan import GIB, layer_bytes
from stages.train.plan_fit import check_fits

GB80 = 80 * GIB


def _config(recipe: str = "tiny", *sets: str) -> TrainConfig:
    overrides = [parse_override(text) for text in sets]
    return build(TrainConfig, apply_overrides(load_recipe(recipe), overrides))


# -- exact: parameters, gradients and optimizer state of the real tiny model --------------------


@pytest.mark.parametrize("freeze_vision", [False, True])
def test_tiny_plan_equals_the_bytes_of_a_real_adamw_step(tiny_model_dir: Path, freeze_vision):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if freeze_vision:
        model.model.visual.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    loss = sum(p.square().sum() for p in trainable)  # every trainable tensor gets a gradient
    loss.backward()
    optimizer.step()

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    measured = {
        "parameters (fp32 master)": nbytes(model.parameters()),  # tied weights once
        "gradients (fp32)": nbytes(p.grad for p in trainable),
        "optimizer (AdamW fp32 moments)": nbytes(
            v for state in optimizer.state.values() for v in state.values()
        ),
    }
    config = _config("tiny", f"model.freeze_vision={str(freeze_vision).lower()}")
    plan = plan_memory(config, processes=1, gpu_bytes=GB80)
    assert {k: plan.by_name[k] for k in measured} == measured
    assert plan.trainable == sum(p.numel() for p in trainable)
    assert "DDP gradient buckets" not in plan.by_name  # one process: no DDP wrapper
    if freeze_vision:
        assert plan.trainable < plan.parameters


def test_fsdp_shards_every_tensor_on_its_first_dimension() -> None:
    config = _config("tiny", "trainer.strategy=fsdp")
    whole = plan_memory(config, processes=1, gpu_bytes=GB80).by_name
    sharded = plan_memory(config, processes=3, gpu_bytes=GB80).by_name
    shapes = [p.shape for p in architecture("tiny").parameters]
    rank0 = sum(math.ceil(s[0] / 3) * math.prod(s[1:]) for s in shapes)  # torch.chunk sizes
    assert sharded["parameters (fp32 master)"] == 4 * rank0
    assert whole["parameters (fp32 master)"] / 3 <= 4 * rank0 < whole["parameters (fp32 master)"]


# -- hand formulas for the published architectures ------------------------------------------------


def _qwen25vl_parameters(h, inter, layers, kv_heads, vocab, tied) -> int:
    """Qwen2.5-VL's parameter count written out by hand from its published dimensions."""
    kv = 128 * kv_heads  # head_dim 128
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v with bias; o without
    layer = attention + 3 * h * inter + 2 * h  # SwiGLU, two RMSNorms
    text = vocab * h * (1 if tied else 2) + layers * layer + h
    hv, iv, depth = 1280, 3420, 32
    block = 2 * hv + (hv * 3 * hv + 3 * hv) + (hv * hv + hv) + 2 * (hv * iv + iv) + (iv * hv + hv)
    patch_embed = hv * 3 * 2 * 14 * 14
    merger = hv + (4 * hv * 4 * hv + 4 * hv) + (4 * hv * h + h)
    return text + depth * block + patch_embed + merger


def test_the_shipped_architectures_count_as_published() -> None:
    three = architecture("Qwen/Qwen2.5-VL-3B-Instruct")
    seven = architecture("Qwen/Qwen2.5-VL-7B-Instruct")
    assert sum(p.numel for p in three.parameters) == 3_754_622_976
    assert sum(p.numel for p in three.parameters) == _qwen25vl_parameters(
        2048, 11008, 36, 2, 151936, tied=True
    )
    assert sum(p.numel for p in seven.parameters) == 8_292_166_656
    assert sum(p.numel for p in seven.parameters) == _qwen25vl_parameters(
        3584, 18944, 28, 4, 152064, tied=False
    )


def test_checkpointed_activations_of_the_3b_recipe_by_hand() -> None:
    """The 3B recipe's activation row, recomputed here from the formula's plain reading."""
    config = _config("qwen2_5_vl_3b")
    b, prompt, response = config.optim.micro_batch, 2048, 2048
    tokens = b * (prompt + response)
    patches = b * 4 * min(prompt, 12_845_056 // 28**2)  # one image at the pixel budget, capped
    total_text = 0
    for _ in range(36):  # each decoder layer keeps its bf16 input
        total_text += tokens * 2 * 2048
    per_token_layer = 2 * (7 * 2048 + 2 * 256 + 4 * 11008) + 8 * 2048 + 4 * 16
    total_text += tokens * per_token_layer + tokens * (4 + 6) * 2048
    total_vision = 0
    for _ in range(32):
        total_vision += patches * 2 * 1280
    total_vision += patches * (4 + 6) * 1280
    per_patch_block = 2 * (7 * 1280 + 2 * 1280 + 4 * 3420) + 8 * 1280 + 4 * 16
    expected = total_vision + max(total_text, patches * per_patch_block)
    plan = plan_memory(config, processes=8, gpu_bytes=GB80)
    assert plan.by_name["activations (with checkpointing)"] == expected


@pytest.mark.parametrize("recipe", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_the_paper_recipes_fit_8x80gb_and_not_1x24gb(recipe: str) -> None:
    config = _config(recipe)
    assert (config.plan.gpus, config.plan.gpu_memory_gib) == (8, 80.0)
    assert config.trainer.strategy == "fsdp" and config.model.gradient_checkpointing
    plan = plan_memory(config)  # the recipe's own target node
    assert plan.processes == 8 and plan.fits, plan
    small = plan_memory(config, processes=1, gpu_bytes=24 * GIB)
    assert not small.fits
    # one process holds every shard: 16 bytes per parameter before anything else
    assert small.by_name["parameters (fp32 master)"] == 4 * plan.parameters


def test_a_frozen_vision_tower_has_no_gradients_state_or_activations() -> None:
    free = plan_memory(_config("qwen2_5_vl_3b"))
    frozen = plan_memory(_config("qwen2_5_vl_3b", "model.freeze_vision=true"))
    vision = sum(
        p.numel for p in architecture("Qwen/Qwen2.5-VL-3B-Instruct").parameters if p.vision
    )
    assert free.trainable - frozen.trainable == vision
    assert frozen.by_name["parameters (fp32 master)"] == free.by_name["parameters (fp32 master)"]
    for name in ("optimizer (AdamW fp32 moments)", "gradients (fp32)"):
        assert frozen.by_name[name] < free.by_name[name]
    act = "activations (with checkpointing)"
    assert frozen.by_name[act] < free.by_name[act]


def test_checkpointing_and_micro_batch_move_the_activations() -> None:
    base = plan_memory(_config("qwen2_5_vl_3b"))
    off = plan_memory(_config("qwen2_5_vl_3b", "model.gradient_checkpointing=false"))
    half = plan_memory(_config("qwen2_5_vl_3b", "optim.micro_batch=4"))
    on_bytes = base.by_name["activations (with checkpointing)"]
    assert off.by_name["activations (no checkpointing)"] > 5 * on_bytes
    assert base.aside[0].bytes == off.by_name["activations (no checkpointing)"]
    assert half.by_name["activations (with checkpointing)"] * 2 == on_bytes


def test_the_sleeping_vllm_engine_counts_in_the_rollout_only() -> None:
    """The engine sleeps during the update: its share is not added to the update's memory, and
    ``auto`` gives it what the held items leave of the GPU (rounded down to 0.01)."""
    config = _config("qwen2_5_vl_3b")
    assert config.rollout.gpu_memory_utilization == "auto"
    plan = plan_memory(config, processes=8, gpu_bytes=GB80)
    engine = next(item for item in plan.items if item.name.startswith("rollout engine"))
    held = plan.phase_bytes("always")
    share = math.floor(100 * (GB80 - held) / GB80) / 100
    assert engine.bytes == int(share * GB80) and engine.phases == ("rollout",)
    assert held + engine.bytes <= GB80 < held + engine.bytes + 0.01 * GB80
    assert plan.total == held + max(plan.phase_bytes("update"), engine.bytes)
    fixed = plan_memory(
        _config("qwen2_5_vl_3b", "rollout.gpu_memory_utilization=0.4"), processes=8, gpu_bytes=GB80
    )
    assert fixed.by_name["rollout engine (vllm, 0.4 of the GPU)"] == int(0.4 * GB80)
    hf = plan_memory(_config("qwen2_5_vl_3b", "rollout.backend=hf"), processes=8, gpu_bytes=GB80)
    assert not any(item.name.startswith("rollout engine") for item in hf.items)


# -- the activation estimate against what autograd saves -----------------------------------------


def saved_and_estimated(checkpointing: bool, freeze_vision: bool) -> tuple[int, int]:
    """(bytes autograd saves, the plan's estimate) for the forward of a small bf16 Qwen2.5-VL
    on CPU, two rows of 512 tokens with one 256-patch image each (weights excluded; a
    checkpointed layer's recompute happens in backward and is not in either figure)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    h, inter, heads, kv_heads, hv, iv = 256, 1024, 4, 2, 128, 512
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 1000,
            "hidden_size": h,
            "intermediate_size": inter,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "rope_parameters": rope,
            "bos_token_id": 0,
            "eos_token_id": 1,
        },
        vision_config={
            "depth": 2,
            "hidden_size": hv,
            "intermediate_size": iv,
            "num_heads": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": h,
        },
        image_token_id=999,
        video_token_id=998,
        vision_start_token_id=997,
        vision_end_token_id=996,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).train()
    if freeze_vision:
        model.model.visual.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    rows, grid, length = 2, (1, 16, 16), 512
    image_tokens = grid[1] * grid[2] // 4
    ids = torch.randint(0, 990, (rows, length))
    ids[:, 10 : 10 + image_tokens] = 999
    pixels = torch.randn(rows * grid[1] * grid[2], 3 * 2 * 14 * 14, dtype=torch.bfloat16)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(
            input_ids=ids,
            pixel_values=pixels,
            image_grid_thw=torch.tensor([grid] * rows),
            use_cache=False,
        )
    tokens, patches = rows * length, rows * grid[1] * grid[2]
    a = layer_bytes(h, kv_heads * h // heads, inter, heads, 2)
    av = layer_bytes(hv, hv, iv, 2, 2)
    text = tokens * (2 * (2 * h if checkpointing else a) + 10 * h)
    vision = 0 if freeze_vision else patches * (2 * (2 * hv if checkpointing else av) + 10 * hv)
    return sum(saved.values()), text + vision


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("freeze_vision", [False, True])
def test_activation_estimate_is_close_to_the_bytes_autograd_saves(checkpointing, freeze_vision):
    measured, estimate = saved_and_estimated(checkpointing, freeze_vision)
    assert abs(estimate - measured) / measured < 0.15, (estimate, measured)


# -- the command line -------------------------------------------------------------------------------


def test_plan_prints_the_paper_recipe_on_a_cpu_machine() -> None:
    result = run_cli("train", "--recipe", "qwen2_5_vl_7b", "--plan")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Qwen/Qwen2.5-VL-7B-Instruct, 8.29B parameters" in out
    assert "fsdp on 8 GPUs of 80.00 GiB" in out and "plan.gpus" in out
    plan = plan_memory(_config("qwen2_5_vl_7b"))
    for item in plan.items:
        assert item.name in out and human_bytes(item.bytes) in out
    assert f"fits in 80.00 GiB per GPU ({human_bytes(GB80 - plan.total)} to spare)" in out
    assert "activations (no checkpointing) would be" in out


def test_plan_for_other_hardware_says_it_does_not_fit(tiny_model_dir: Path) -> None:
    result = run_main(
        "train", "--recipe", "qwen2_5_vl_3b", "--plan", "--gpus", "1", "--gpu-memory", "40"
    )
    assert result.returncode == 0
    assert "fsdp on 1 GPU of 40.00 GiB" in result.stdout
    assert "does NOT fit" in result.stdout and "--gpus / --gpu-memory" in result.stdout
    tiny = run_main("train", "--recipe", "tiny", "--plan", "--gpu-memory", "24")
    assert tiny.returncode == 0 and "ddp on 1 GPU of 24.00 GiB" in tiny.stdout
    plan = plan_memory(_config("tiny"), processes=1, gpu_bytes=24 * GIB)
    assert human_bytes(plan.by_name["parameters (fp32 master)"]) in tiny.stdout


def test_gpus_without_plan_is_one_line() -> None:
    result = run_main("train", "--recipe", "tiny", "--gpus", "2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --gpus and --gpu-memory describe the hardware of --plan; a run uses its own"
    ]


def test_a_run_that_cannot_fit_is_refused_before_anything_is_loaded(tmp_path: Path) -> None:
    """CLI subprocess with an empty model cache: one line, exit 2, no run directory, and the
    tiny model never built (its config comes from the tokenizer alone)."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    result = run_cli(
        "train",
        "--recipe",
        "tiny",
        "--run-dir",
        run_dir,
        "--set",
        "plan.check=always",
        "--set",
        "plan.gpu_memory_gib=4",
        "--set",
        "trainer.device=cpu",  # the recipe's target node, also on a machine with GPUs
        env={"MGPO_CACHE": str(cache)},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: memory plan: ") and "does not fit in 4.00 GiB" in lines[0]
    assert "largest item: activations (no checkpointing)" in lines[0]
    assert "change model.gradient_checkpointing" in lines[0]
    assert not run_dir.exists()
    assert list(cache.iterdir()) == []


def test_the_check_runs_on_gpus_only_unless_asked(tiny_model_dir: Path) -> None:
    tight = ("plan.gpu_memory_gib=1", "trainer.device=cpu")
    check_fits(_config("tiny", *tight))  # auto on a CPU machine: nothing refused
    check_fits(_config("tiny", *tight, "plan.check=never"))
    with pytest.raises(MgpoError, match="change model.gradient_checkpointing"):
        check_fits(_config("tiny", *tight, "plan.check=always"))
    check_fits(_config("tiny", "plan.check=always", "trainer.device=cpu"))  # fits 1 x 80 GiB


def test_unknown_hub_model_without_network_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        "--recipe",
        "tiny",
        "--plan",
        "--model",
        "someone/no-such-model",
        env={"HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model someone/no-such-model: cannot read its config" in lines[0]


def test_a_local_folder_is_planned_from_its_config_alone(tmp_path: Path) -> None:
    """A folder with the 3B config.json and no weights plans exactly as the hub id."""
    from stages.models.architecture import shipped_config

    folder = tmp_path / "qwen3b"
    shipped_config("Qwen/Qwen2.5-VL-3B-Instruct").save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"max_pixels": 12_845_056}))
    hub = plan_memory(_config("qwen2_5_vl_3b"))
    local = plan_memory(_config("qwen2_5_vl_3b", f"model.name={folder}"))
    assert local.by_name == hub.by_name


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("plan.check=sometimes", "plan.check 'sometimes': expected auto, always or never"),
        ("plan.gpus=0", "plan.gpus must be at least 1"),
        ("plan.gpu_memory_gib=0", "plan.gpu_memory_gib must be positive"),
    ],
)
def test_plan_keys_are_checked(setting: str, fragment: str) -> None:
    with pytest.raises(MgpoError, match=fragment):
        _config("tiny", setting)


def test_resume_may_change_the_plan_keys(tmp_path: Path) -> None:
    from stages.train.run_dir import check_run_dir, write_run_dir

    first = _config("tiny", f"run_dir={tmp_path / 'run'}")
    write_run_dir(first, overwrite=False)
    later = _config("tiny", f"run_dir={tmp_path / 'run'}", "plan.gpus=4", "plan.check=never")
    check_run_dir(later, resume=True, overwrite=False)


@pytest.mark.parametrize("recipe", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_the_readme_shows_the_current_plans(recipe: str) -> None:
    from stages.train import plan_hardware, plan_table

    config = _config(recipe, "trainer.device=cpu")  # the recipe's node, as on a CPU machine
    hardware = plan_hardware(config)
    table = plan_table(plan_memory(config), config, hardware.source)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"$ mgpo train --recipe {recipe} --plan\n{table}\n" in readme


def test_tiny_without_a_cache_plans_from_the_builder_config(tiny_model_dir, tmp_path, monkeypatch):
    """An empty cache: the config comes from the tokenizer alone and matches the built folder."""
    built = architecture(str(tiny_model_dir))
    monkeypatch.setenv("MGPO_CACHE", str(tmp_path))
    assert architecture("tiny") == dataclasses.replace(built, name="tiny")
    assert list(tmp_path.iterdir()) == []
