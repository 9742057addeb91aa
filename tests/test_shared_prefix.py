"""The shared-prefix forward against the standard one, and how samples are cut into batches."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image, ImageDraw

from stages.errors import MgpoError
from stages.models.loading import load_policy
from stages.train import batching
from stages.train import shared_prefix as sp
from stages.train.forward import LogprobModel, response_logprobs
from stages.train.sharding import blocks

CPU = torch.device("cpu")


def shape_image(size: int = 56, colour=(220, 40, 40)) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((4, 4, size - 10, size - 10), fill=colour)
    return image


def vision_rows() -> list[dict]:
    return [
        {"id": "one", "prompt": "<image>What colour is the shape?", "images": [shape_image()]},
        {"id": "text", "prompt": "How many shapes are there in all?", "images": []},
        {
            "id": "two",
            "prompt": "Left <image> right <image> which is larger?",
            "images": [shape_image(56), shape_image(120, (40, 80, 220)).resize((120, 90))],
        },
    ]


def text_rows() -> list[dict]:
    return [
        {"id": "one", "prompt": "What colour is the shape?", "images": []},
        {
            "id": "text",
            "prompt": "How many shapes are there? Count each one of them.",
            "images": [],
        },
        {"id": "two", "prompt": "Which?", "images": []},
    ]


def llama_policy():
    """A small Llama-architecture causal LM built from a config (untied head, 3 layers)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from stages.models.policy_io import text_io
    from stages.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return model, text_io(tokenizer, config, GenerationConfig(), "llama")


def policy(kind: str):
    """``tiny`` (vision), ``tiny-text``, ``llama``; ``-eager``: eager attention (additive mask)."""
    if kind == "llama":
        return llama_policy()
    attention = "eager" if kind.endswith("-eager") else None
    return load_policy(kind.removesuffix("-eager"), dtype="float32", attn_implementation=attention)


# Groups of different prompt and response lengths: rows shared by object, interleaved.
RESPONSES = [[40, 41, 42, 502], [7, 8], [100, 200, 300], [5], [9, 10, 11, 12, 13, 14], [50, 60]]
LAYOUT = [0, 1, 0, 2, 0, 2]  # which prompt each sample answers


def samples(rows: list[dict]) -> tuple[list[dict], list[list[int]]]:
    return [rows[p] for p in LAYOUT], RESPONSES


def loss_and_grads(model, io, rows, responses, shared: bool, checkpointing: bool = False):
    """A loss that uses every log-prob and entropy with different weights, and its gradients
    (in train mode, so that activation checkpointing, when on, recomputes)."""
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    model.zero_grad(set_to_none=True)
    calls = []
    hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in blocks(model)]
    result = response_logprobs(
        LogprobModel(model), io, rows, responses, device=CPU, temperature=0.7, shared_prefix=shared
    )
    weights = torch.linspace(-1.0, 1.0, result.logp.numel()).view_as(result.logp)
    loss = (result.logp * weights).sum() + 0.3 * result.entropy.sum()
    loss.backward()
    for hook in hooks:
        hook.remove()
    # every block (decoder layer, vision block) runs once, and again in backward if checkpointed
    assert len(calls) == len(blocks(model)) * (2 if checkpointing else 1)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    if checkpointing:
        model.gradient_checkpointing_disable()
    return result, grads


@pytest.mark.parametrize(
    ("kind", "prompts", "checkpointing"),
    [
        ("tiny", "vision", False),  # images (one and two per prompt) and a text-only row
        ("tiny", "text", False),  # a vision-language model on text-only rows (blank image)
        ("tiny", "vision", True),  # activation checkpointing on the packed side
        ("tiny-text", "text", False),
        ("llama", "text", False),
        ("tiny-text-eager", "text", False),  # the additive float mask
    ],
    ids=["vision", "vision-text-rows", "vision-checkpointing", "text", "llama", "text-eager"],
)
def test_packed_forward_equals_the_standard_forward(tiny_model_dir, kind, prompts, checkpointing):
    """Log-probs and entropies to 1e-5 (fp32), every parameter's gradient to 1e-5 relative."""
    model, io = policy(kind)
    assert sp.attention_implementation(model) == ("eager" if "eager" in kind else "sdpa")
    rows, responses = samples(vision_rows() if prompts == "vision" else text_rows())
    want, want_grads = loss_and_grads(model, io, rows, responses, False)
    got, got_grads = loss_and_grads(model, io, rows, responses, True, checkpointing)
    assert torch.equal(got.mask, want.mask)
    torch.testing.assert_close(got.logp, want.logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.entropy, want.entropy, atol=1e-5, rtol=0)
    assert got_grads.keys() == want_grads.keys()
    if prompts == "vision":
        assert any(n.startswith("model.visual.") for n in got_grads)
    for name, grad in want_grads.items():
        error = (got_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert error < 1e-5, f"{name}: relative gradient error {float(error):.2e}"


def test_packed_rows_and_their_vision_positions(tiny_policy):
    """One row per prompt, its images once; the prompt keeps its 3-D positions and each response
    gets those the model gives prompt + response as one sequence."""
    model, io = tiny_policy
    rows = vision_rows()
    chosen = [rows[2], rows[0], rows[2]]
    responses = [[5, 6, 7], [8, 9], [9, 10]]
    packed = sp.pack(io, chosen, responses, rope_index=model.model.get_rope_index)
    assert packed.rows == 2 and packed.unit_lengths == [[3, 2], [2]]
    assert len(packed.inputs["image_grid_thw"]) == 3  # row 2's two images and row 0's one
    positions = packed.inputs["position_ids"]
    for s, (row, response) in enumerate(zip(chosen, responses, strict=True)):
        full = io.encode([row], [response]).inputs
        want, _ = model.model.get_rope_index(
            full["input_ids"], full["mm_token_type_ids"], full["image_grid_thw"]
        )
        u = int(packed.index[s, 0]) // packed.width
        prompt = packed.prompt_lengths[u]
        start = int(packed.index[s, 1]) % packed.width  # token 1 is predicted at token 0's column
        columns = start + torch.arange(len(response))
        assert int(packed.index[s, 0]) % packed.width == prompt - 1  # the prompt's last token
        assert torch.equal(packed.inputs["input_ids"][u, columns], torch.tensor(response))
        assert torch.equal(positions[:, u, :prompt], want[:, 0, :prompt])
        assert torch.equal(positions[:, u, columns], want[:, 0, prompt:])


def test_block_mask_by_hand():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = sp.block_mask(segments, "sdpa")[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # response 1: the prompt and itself
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # response 2 never sees response 1
        [1, 1, 0, 0, 0, 1],  # padding: prompt and itself, never empty
    ]
    additive = sp.block_mask(segments, "eager")[0, 0]
    assert float(additive[4, 2]) == torch.finfo(torch.float32).min and float(additive[4, 4]) == 0


def test_decide_on_off_auto_and_unsupported_attention():
    """One decision per step: ``on`` refuses an attention without block masks, ``auto`` packs
    where it saves work (and never with such an attention), ``off`` never packs."""
    model, io = load_policy("tiny-text", dtype="float32")
    rows, responses = samples(text_rows())
    units = [[0, 2, 4], [1], [3, 5]]
    assert sp.decide("auto", model, io, rows, units, responses)
    assert not sp.decide("off", model, io, rows, units, responses)
    assert sp.decide("on", model, io, rows, [[0], [1]], responses)
    long = [[1] * 400] * len(responses)  # long responses to short prompts: the square dominates
    assert not sp.decide("auto", model, io, rows, units, long)
    model.config._attn_implementation = "flash_attention_2"  # no kernel here: the name only
    with pytest.raises(MgpoError, match="trainer.shared_prefix on: attention 'flash_attention_2'"):
        sp.decide("on", model, io, rows, units, responses)
    assert not sp.decide("auto", model, io, rows, units, responses)


def test_saves_work_weighs_prompt_tokens_against_attention():
    # a long prompt, short responses: packing saves most of the work
    assert sp.saves_work([300], [[20] * 8], hidden=64)
    # a short prompt with long responses at a small width: the dense square costs more
    assert not sp.saves_work([10], [[400] * 8], hidden=64)
    # nothing shared (one sample per prompt): never
    assert not sp.saves_work([50, 60], [[10], [10]], hidden=64)


# --- batching ------------------------------------------------------------------------------------


def test_mini_batches_are_whole_groups_in_a_seeded_order():
    group_ids = [0] * 4 + [1] * 4 + [2] * 3 + [3] * 4
    minis = batching.group_mini_batches(group_ids, 2, random.Random(5))
    assert sorted(s for m in minis for s in m) == list(range(len(group_ids)))
    for mini in minis:
        groups = {group_ids[s] for s in mini}
        assert sum(group_ids.count(g) for g in groups) == len(mini)  # whole groups only
    assert minis == batching.group_mini_batches(group_ids, 2, random.Random(5))


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_micro_batches_cover_the_mini_batch_once_with_equal_counts(grouped, world):
    group_ids = [0] * 5 + [1] * 5 + [2] * 2 + [3] * 5
    mini = list(range(len(group_ids)))
    size = 4
    plans = [
        batching.micro_batches(mini, group_ids, size, world, r, grouped=grouped)
        for r in range(world)
    ]
    assert len({len(p) for p in plans}) == 1  # same number of forwards on every process
    seen = [s for p in plans for micro in p for s in micro if s is not None]
    assert sorted(seen) == mini
    assert all(0 < len(micro) <= size for p in plans for micro in p)
    if grouped:  # a group is cut only where it is larger than a micro-batch, into equal parts
        for p in plans:
            for micro in p:
                for g in {group_ids[s] for s in micro if s is not None}:
                    part = sum(1 for s in micro if s is not None and group_ids[s] == g)
                    assert part in {2: (2,), 5: (2, 3)}[group_ids.count(g)]
