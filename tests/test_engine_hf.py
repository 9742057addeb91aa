"""The hf rollout engine on the real tiny model: log-probs, seeds, stops, banned tokens, weights."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from stages.errors import MgpoError
from stages.models.loading import load_policy
from stages.rollout.engine_hf import HFEngine, nucleus_filter


def shape_image(size: int = 56, colour=(220, 40, 40)) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((6, 6, size - 12, size - 12), fill=colour)
    return image


ROWS = [
    {"id": "a", "prompt": "<image>What colour is the shape?", "images": [shape_image()]},
    {"id": "b", "prompt": "How many shapes are there?", "images": []},
    {"id": "c", "prompt": "<image> vs <image>: which?", "images": [shape_image(), shape_image(90)]},
]


def plain_logprobs(model, io, row, response, temperature):
    """Independent reference: one row, no padding, full-vocabulary log_softmax(logits / T)."""
    batch = io.encode([row], [response])
    start = batch.prompt_lengths[0]
    with torch.no_grad():
        logits = model(**batch.inputs, use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logp, [float(logp[start - 1 + i, t]) for i, t in enumerate(response)], start


def assert_logprobs_match(model, io, rows, groups, temperature):
    for row, samples in zip(rows, groups, strict=True):
        for sample in samples:
            assert len(sample.logprobs) == len(sample.response_ids) > 0
            _, want, _ = plain_logprobs(model, io, row, sample.response_ids, temperature)
            assert max(abs(a - b) for a, b in zip(sample.logprobs, want, strict=True)) < 1e-4


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_logprobs_match_a_teacher_forced_forward(tiny_policy, temperature, top_p):
    model, io = tiny_policy
    engine = HFEngine(model, io, micro_batch_size=4)  # 3 prompts x 2 -> batches of 4 and 2
    groups = engine.generate(
        ROWS, n=2, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3
    )
    assert [len(g) for g in groups] == [2, 2, 2]
    assert_logprobs_match(model, io, ROWS, groups, temperature)


def test_same_seed_same_samples_and_global_rng_untouched(tiny_policy):
    model, io = tiny_policy
    engine = HFEngine(model, io, micro_batch_size=3)
    state = torch.get_rng_state()
    first = engine.generate(ROWS, n=3, max_new_tokens=10, seed=11)
    assert torch.equal(state, torch.get_rng_state())
    assert engine.generate(ROWS, n=3, max_new_tokens=10, seed=11) == first
    other = engine.generate(ROWS, n=3, max_new_tokens=10, seed=12)
    assert other != first
    ids = [s.response_ids for s in first[0]]
    assert len({tuple(i) for i in ids}) == 3  # the n samples of one prompt differ


def test_a_prompts_samples_depend_on_seed_prompt_and_sample_index_only(tiny_policy):
    """Each sample draws from its own stream: the micro-batch size, the other prompts of the
    call and their order (another process's slice) change nothing but float noise."""
    model, io = tiny_policy
    kwargs = {"n": 3, "temperature": 1.0, "max_new_tokens": 10, "seed": 11}
    whole = HFEngine(model, io, micro_batch_size=4).generate(ROWS, **kwargs)
    by_id = {row["id"]: samples for row, samples in zip(ROWS, whole, strict=True)}
    for size, rows in ((1, ROWS), (9, ROWS[::-1]), (2, ROWS[1:2])):
        again = HFEngine(model, io, micro_batch_size=size).generate(rows, **kwargs)
        for row, samples in zip(rows, again, strict=True):
            want = by_id[row["id"]]
            assert [s.response_ids for s in samples] == [s.response_ids for s in want]
            for got, expected in zip(samples, want, strict=True):
                assert got.logprobs == pytest.approx(expected.logprobs, abs=1e-5)


def test_greedy_takes_the_best_allowed_token(tiny_policy):
    model, io = tiny_policy
    engine = HFEngine(model, io)
    groups = engine.generate(ROWS[:1], n=2, temperature=0.0, max_new_tokens=8, seed=0)
    first, second = groups[0]
    assert first.response_ids == second.response_ids
    logp, _, start = plain_logprobs(model, io, ROWS[0], first.response_ids, 1.0)
    allowed = logp.clone()
    allowed[:, io.banned_token_ids] = -math.inf
    for i, token in enumerate(first.response_ids):
        assert token == int(allowed[start - 1 + i].argmax())


def test_stop_token_ends_a_sample_and_is_kept(tiny_policy):
    model, io = tiny_policy
    kwargs = {"temperature": 1.0, "max_new_tokens": 8, "seed": 7}
    free = HFEngine(model, io).generate(ROWS[:2], **kwargs)
    ids = free[0][0].response_ids
    assert free[0][0].finish_reason == "length" and len(ids) == 8
    # Same seed, same draws: with ids[4] as the stop token, sampling ends at its first occurrence.
    end = ids.index(ids[4]) + 1
    stopping = dataclasses.replace(io, stop_token_ids=[ids[4]])
    out = HFEngine(model, stopping).generate(ROWS[:2], **kwargs)
    sample = out[0][0]
    assert sample.finish_reason == "stop" and sample.response_ids == ids[:end]
    assert sample.logprobs == free[0][0].logprobs[:end]
    assert sample.response == io.decode(ids[:end])
    other = out[1][0].response_ids
    assert other == free[1][0].response_ids[: len(other)]


def test_vision_tokens_are_never_sampled(tiny_policy):
    """A random model does sample <|image_pad|> & co; the next forward would then fail."""
    model, io = tiny_policy
    kwargs = {"n": 8, "temperature": 3.0, "max_new_tokens": 48, "seed": 7}
    banned = set(io.banned_token_ids)
    free = dataclasses.replace(io, banned_token_ids=[])
    unbanned = HFEngine(model, free, micro_batch_size=8).generate(ROWS[:1], **kwargs)[0]
    bad = [s for s in unbanned if banned & set(s.response_ids)]
    assert bad, "control: without the ban the random model emits vision tokens"
    image_pad = io.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    follow_up = [s for s in bad if image_pad in s.response_ids]
    assert follow_up  # seeded: this draw does emit <|image_pad|>
    batch = io.encode(ROWS[:1], [follow_up[0].response_ids])  # and the next forward then fails
    with pytest.raises((ValueError, RuntimeError), match="[Ii]mage features and image tokens"):
        model(**batch.inputs)
    engine = HFEngine(model, io, micro_batch_size=8)
    for sample in engine.generate(ROWS[:1], **kwargs)[0]:
        assert not banned & set(sample.response_ids)


def test_checkpoint_generation_config_does_not_change_sampling(tmp_path: Path, tiny_model_dir):
    """Qwen checkpoints ship top_k=1, repetition_penalty=1.05 ...: the engine ignores them."""
    folder = tmp_path / "hostile"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=False, top_k=1, top_p=0.01, temperature=0.01, repetition_penalty=3.0)
    (folder / "generation_config.json").write_text(json.dumps(config))
    model, io = load_policy(str(folder))
    assert model.generation_config.top_k == 1
    engine = HFEngine(model, io)
    groups = engine.generate(ROWS[:2], n=3, temperature=1.0, max_new_tokens=8, seed=1)
    assert_logprobs_match(model, io, ROWS[:2], groups, 1.0)
    assert len({tuple(s.response_ids) for s in groups[0]}) == 3
    assert model.generation_config.top_k == 1  # restored


def test_sampled_mode_reports_the_renormalised_distribution(tiny_policy):
    model, io = tiny_policy
    engine = HFEngine(model, io, logprobs="sampled")
    groups = engine.generate(ROWS[:2], n=2, temperature=1.0, max_new_tokens=6, seed=2)
    for row, samples in zip(ROWS[:2], groups, strict=True):
        for sample in samples:
            logp, policy, start = plain_logprobs(model, io, row, sample.response_ids, 1.0)
            for i, lp in enumerate(sample.logprobs):
                banned_mass = logp[start - 1 + i, io.banned_token_ids].exp().sum()
                want = policy[i] - math.log(1 - float(banned_mass))
                assert abs(lp - want) < 1e-4 and lp > policy[i]


def test_update_weights_and_load_state_dict(tmp_path: Path, tiny_model_dir):
    from stages.models.tiny import build_tiny_model

    other_dir = build_tiny_model(tmp_path / "seed1", seed=1)
    target, io = load_policy(str(tiny_model_dir))
    source, _ = load_policy(str(other_dir))
    want = HFEngine(source, io).generate(ROWS, temperature=0.0, max_new_tokens=8)
    engine = HFEngine(target, io)
    assert engine.generate(ROWS, temperature=0.0, max_new_tokens=8) != want
    engine.update_weights(source.state_dict().items())
    assert engine.generate(ROWS, temperature=0.0, max_new_tokens=8) == want
    with pytest.raises(KeyError, match="no parameter named 'nope'"):
        engine.update_weights([("nope", torch.zeros(1))])
    fresh, _ = load_policy(str(tiny_model_dir))
    engine2 = HFEngine(fresh, io)
    engine2.load_state_dict(source.state_dict())
    assert engine2.generate(ROWS, temperature=0.0, max_new_tokens=8) == want


def test_training_mode_is_restored(tiny_model_dir):
    model, io = load_policy(str(tiny_model_dir))
    model.train()
    HFEngine(model, io).generate(ROWS[:1], max_new_tokens=2)
    assert model.training and model.model.rope_deltas is None


def test_text_only_model(tiny_model_dir):
    model, io = load_policy("tiny-text")
    rows = [ROWS[1], {"id": "d", "prompt": "Count to three.", "images": []}]
    groups = HFEngine(model, io).generate(rows, n=2, temperature=0.8, max_new_tokens=10, seed=4)
    assert_logprobs_match(model, io, rows, groups, 0.8)


def test_bad_options_are_one_line_errors(tiny_policy):
    engine = HFEngine(*tiny_policy)
    for kwargs, message in [
        ({"n": 0}, "-n must be at least 1"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ]:
        with pytest.raises(MgpoError, match=message):
            engine.generate(ROWS[:1], **kwargs)
    with pytest.raises(MgpoError, match="logprobs must be one of"):
        HFEngine(*tiny_policy, logprobs="raw")


def plain_nucleus(probs: list[float], top_p: float) -> set[int]:
    """Most likely first; keep adding until the kept mass reaches top_p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= top_p:
            break
    return kept


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_nucleus_filter_matches_the_plain_definition(top_p):
    generator = torch.Generator().manual_seed(int(top_p * 1000))
    scores = torch.randn(6, 40, generator=generator) * 2
    filtered = nucleus_filter(scores, top_p)
    for row, out in zip(scores, filtered, strict=True):
        probs = torch.softmax(row.double(), 0).tolist()
        assert {i for i in range(40) if out[i] > -math.inf} == plain_nucleus(probs, top_p)
        kept = out > -math.inf
        assert torch.equal(out[kept], row[kept])
    assert torch.equal(nucleus_filter(scores, 1.0), scores)


def _vision_images_seen(model) -> list[int]:
    """A counter of the images the vision tower encodes (one entry per call)."""
    seen: list[int] = []
    model.model.visual.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(kwargs["grid_thw"])), with_kwargs=True
    )
    return seen


@pytest.mark.parametrize(
    ("kind", "micro_batch", "temperature", "top_p"),
    [("tiny", 9, 1.0, 1.0), ("tiny", 4, 0.7, 0.9), ("tiny-text", 5, 1.0, 1.0)],
    ids=["vision-one-batch", "vision-straddling", "text-model"],
)
def test_shared_prompt_prefill_gives_the_same_samples_and_logprobs(
    tiny_model_dir, kind, micro_batch, temperature, top_p
):
    """Each prompt prefilled (and its images encoded) once per micro-batch, not once per sample:
    the samples and behaviour log-probs are those of the per-sample engine for the same seed."""
    model, io = load_policy(kind)
    rows = ROWS if kind == "tiny" else [ROWS[1], {"id": "d", "prompt": "Count.", "images": []}]
    kwargs = {"n": 3, "temperature": temperature, "top_p": top_p, "max_new_tokens": 10, "seed": 9}
    seen = _vision_images_seen(model) if kind == "tiny" else []
    plain = HFEngine(model, io, micro_batch_size=micro_batch, share_prompts=False)
    want = plain.generate(rows, **kwargs)
    images_plain = sum(seen)
    seen.clear()
    got = HFEngine(model, io, micro_batch_size=micro_batch).generate(rows, **kwargs)
    for want_group, got_group in zip(want, got, strict=True):
        assert [s.response_ids for s in got_group] == [s.response_ids for s in want_group]
        assert [s.finish_reason for s in got_group] == [s.finish_reason for s in want_group]
        for a, b in zip(got_group, want_group, strict=True):
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5
    if kind == "tiny" and micro_batch == 9:  # all 9 samples in one micro-batch
        assert images_plain == 3 * 3 and sum(seen) == 3  # images of a (1) and c (2), once each
        assert model.model.rope_deltas is None  # generate's M-RoPE offsets do not leak out
    assert_logprobs_match(model, io, rows, got, temperature)


def test_one_token_prompts_and_single_samples_take_the_plain_path(tiny_model_dir):
    model, io = load_policy("tiny-text")
    one = io.tokenizer.convert_ids_to_tokens([40])[0]
    rows = [{"id": "x", "prompt": one, "images": []}]
    io = dataclasses.replace(io, chat_template=None)  # a base model: the prompt text as it is
    assert len(io.encode(rows).inputs["input_ids"][0]) == 1
    kwargs = {"n": 3, "max_new_tokens": 5, "seed": 1}
    shared = HFEngine(model, io).generate(rows, **kwargs)
    assert shared == HFEngine(model, io, share_prompts=False).generate(rows, **kwargs)
