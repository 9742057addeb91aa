"""Model loading, the built-in tiny model, and turning prompt rows into model inputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from stages.errors import MgpoError
from stages.models.loading import load_policy, resolve_model
from stages.models.logprobs import response_logprobs, token_logprobs
from stages.models.policy_io import TextIO, VisionIO, split_prompt
from stages.models.processor import QwenVLImageProcessor, expand_image_tokens
from stages.models.tiny import (
    FORMAT_TOKENS,
    SPECIAL_TOKENS,
    build_tiny_model,
    build_tiny_tokenizer,
    learn_bpe_merges,
)


def shape_image(size: int = 56, colour=(220, 40, 40)) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((4, 4, size - 10, size - 10), fill=colour)
    return image


def rows() -> list[dict]:
    return [
        {"id": "one", "prompt": "<image>What colour is the shape?", "images": [shape_image()]},
        {"id": "text", "prompt": "How many shapes are there?", "images": []},
        {
            "id": "two",
            "prompt": "Left <image> right <image> which is larger?",
            "images": [shape_image(56), shape_image(120, (40, 80, 220)).resize((120, 90))],
        },
    ]


# --- tokenizer ---------------------------------------------------------------------------------


def test_learn_bpe_merges_matches_hand_computed_merges():
    words = Counter({tuple("abab"): 3, tuple("ab"): 1, tuple("ba"): 1})
    # pairs: ab=3*2+1=7, ba=3+1=4 -> merge ab; then (ab,ab)=3 -> merge; then nothing >= 2
    assert learn_bpe_merges(words, 10) == [("a", "b"), ("ab", "ab")]
    # ties go to the smaller pair
    assert learn_bpe_merges(Counter({tuple("xy"): 2, tuple("cd"): 2}), 1) == [("c", "d")]


def test_tiny_tokenizer_has_cheap_format_tokens_and_single_digits():
    tok = build_tiny_tokenizer()
    assert len(tok) == 512
    for token in (*SPECIAL_TOKENS, *FORMAT_TOKENS):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    digits = tok("2024 and 17", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in digits][:4] == ["2", "0", "2", "4"]
    text = "<think> I count 12 red circles. </think> The answer is \\boxed{12} ∠ABC = 30°"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # any text round-trips (byte-level)
    short = "<think> I count 12 red circles. </think> The answer is \\boxed{12}"
    assert len(tok(short, add_special_tokens=False)["input_ids"]) <= 20  # words are whole tokens
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert build_tiny_tokenizer().get_vocab() == tok.get_vocab()


# --- the tiny model folder -----------------------------------------------------------------------


def test_tiny_build_is_deterministic_from_seed(tmp_path: Path, tiny_model_dir: Path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    first = load_file(tiny_model_dir / "model.safetensors")
    second = load_file(again / "model.safetensors")
    third = load_file(other / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temp folders left
    assert build_tiny_model(again, seed=0) == again  # present: not rebuilt


def test_tiny_folder_reads_as_a_stock_qwen25_vl_folder(tiny_model_dir: Path):
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen2_5_vl"
    pre = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Qwen2_5_VLProcessor"
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor"
    assert AutoImageProcessor.from_pretrained(tiny_model_dir).merge_size == 2
    assert len(AutoTokenizer.from_pretrained(tiny_model_dir)) == config.text_config.vocab_size
    assert "<|image_pad|>" in (tiny_model_dir / "chat_template.jinja").read_text()
    params = sum(t.numel() for t in load_file(tiny_model_dir / "model.safetensors").values())
    assert params < 1_000_000


def test_stock_processor_is_used_when_it_loads(tiny_model_dir: Path, tiny_policy):
    """Without torchvision transformers cannot build Qwen2_5_VLProcessor: we fall back."""
    from transformers import AutoProcessor

    _, io = tiny_policy
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="[Tt]orchvision"):
            AutoProcessor.from_pretrained(tiny_model_dir)
        assert isinstance(io.processor, QwenVLImageProcessor)
    else:
        assert type(io.processor).__name__ == "Qwen2_5_VLProcessor"


# --- load_policy ---------------------------------------------------------------------------------


def test_load_policy_by_builtin_name_uses_the_cache(tiny_model_dir: Path):
    assert resolve_model("tiny") == str(tiny_model_dir)
    model, io = load_policy("tiny")
    assert isinstance(io, VisionIO) and not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert io.banned_token_ids == sorted(
        io.tokenizer.convert_tokens_to_ids(t)
        for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    )
    assert io.stop_token_ids[0] == io.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_missing_or_broken_model_folder_is_one_line_error(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(MgpoError, match="model folder not found") as error:
        load_policy(str(missing))
    assert str(missing) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(MgpoError, match="no config.json"):
        load_policy(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    with pytest.raises(MgpoError, match="cannot load model") as error:
        load_policy(str(tmp_path))
    assert "\n" not in str(error.value)
    with pytest.raises(MgpoError, match="unknown dtype"):
        load_policy("tiny", dtype="float8")
    with pytest.raises(MgpoError, match="model folder not found: ./not/here"):
        load_policy("./not/here")
    assert resolve_model("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_unwritable_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MGPO_CACHE", str(blocker / "cache"))
    with pytest.raises(MgpoError, match="cannot build the tiny model in .*set MGPO_CACHE"):
        load_policy("tiny")


def test_save_and_reload_gives_the_same_policy(tmp_path: Path, tiny_policy):
    model, io = tiny_policy
    model.save_pretrained(tmp_path / "ckpt")
    io.save_pretrained(tmp_path / "ckpt")
    again, io2 = load_policy(str(tmp_path / "ckpt"))
    batch = io.encode(rows())
    assert torch.equal(batch.inputs["input_ids"], io2.encode(rows()).inputs["input_ids"])
    with torch.no_grad():
        a = model(**batch.inputs).logits
        b = again(**batch.inputs).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_text_only_model_loads_and_refuses_images(tmp_path: Path):
    model, io = load_policy("tiny-text")
    assert isinstance(io, TextIO) and type(model).__name__ == "Qwen2ForCausalLM"
    assert io.banned_token_ids == []
    batch = io.encode([rows()[1]])
    assert batch.inputs.keys() == {"input_ids", "attention_mask"}
    with pytest.raises(MgpoError, match="prompt row one has images"):
        io.encode(rows()[:1])


# --- PolicyIO ------------------------------------------------------------------------------------


def test_split_prompt_gives_one_image_part_per_placeholder():
    assert split_prompt("<image>What?") == [{"type": "image"}, {"type": "text", "text": "What?"}]
    assert split_prompt("a<image>b<image>") == [
        {"type": "text", "text": "a"},
        {"type": "image"},
        {"type": "text", "text": "b"},
        {"type": "image"},
    ]
    assert split_prompt("no image") == [{"type": "text", "text": "no image"}]


def test_expand_image_tokens_in_order_across_texts():
    pad = "<|image_pad|>"
    assert expand_image_tokens([f"a{pad}b", f"{pad}{pad}"], [1, 2, 3]) == [
        f"a{pad}b",
        pad * 2 + pad * 3,
    ]
    with pytest.raises(ValueError, match="2 image placeholders"):
        expand_image_tokens([pad * 2], [1])


def test_encode_expands_each_image_to_its_vision_tokens(tiny_policy):
    _, io = tiny_policy
    batch = io.encode(rows())
    ids, grid = batch.inputs["input_ids"], batch.inputs["image_grid_thw"]
    image_id = io.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_image = (grid.prod(-1) // 4).tolist()
    assert per_image[0] == 4  # 56 x 56 pixels -> 4 x 4 patches -> 2 x 2 merged tokens
    assert (ids[0] == image_id).sum() == per_image[0]
    assert (ids[1] == image_id).sum() == 0
    assert (ids[2] == image_id).sum() == per_image[1] + per_image[2]
    assert torch.equal(batch.inputs["mm_token_type_ids"].bool(), ids == image_id)
    # left padding: every row ends with the generation prompt
    assert io.decode(ids[1, -3:].tolist(), skip_special_tokens=False).endswith("assistant\n")
    assert batch.inputs["attention_mask"][1, 0] == 0
    text = io.prompt_text(rows()[0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>What colour" in text


def test_placeholder_count_must_match_images(tiny_policy):
    _, io = tiny_policy
    bad = {"id": "row-7", "prompt": "<image><image>x", "images": [shape_image()]}
    with pytest.raises(MgpoError, match="prompt row row-7: 2 '<image>' placeholders but 1 images"):
        io.encode([bad])


# --- teacher-forced log-probs ----------------------------------------------------------------------


def plain_logprobs(model, io, row, response, temperature):
    """One row, no padding: log_softmax(logits / T) of each response token."""
    batch = io.encode([row], [response])
    start = batch.prompt_lengths[0]
    with torch.no_grad():
        logits = model(**batch.inputs, use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return [float(logp[start - 1 + i, t]) for i, t in enumerate(response)]


TEXT_ROWS = [rows()[1], {"prompt": "Hi", "images": []}]


@pytest.mark.parametrize(
    ("kind", "batch_rows"),
    [("tiny", rows()), ("tiny", TEXT_ROWS), ("tiny-text", TEXT_ROWS)],
    ids=["vision-mixed", "vision-text-only", "text-model"],
)
def test_response_logprobs_match_a_plain_per_row_forward(kind, batch_rows, tiny_model_dir):
    """Left padding, images or not: positions and log-probs equal the unpadded forward's."""
    model, io = load_policy(kind)
    responses = [[40, 41, 42, 502], [7, 8], [100, 200, 300, 400, 500]][: len(batch_rows)]
    batch = io.encode(batch_rows, responses)
    with torch.no_grad():
        got = response_logprobs(model, batch, temperature=0.7)
    width = got.shape[1]
    lengths = torch.tensor([len(r) for r in responses])
    assert torch.equal(batch.response_mask[:, -width:].sum(1), lengths)
    for i, (row, response) in enumerate(zip(batch_rows, responses, strict=True)):
        want = plain_logprobs(model, io, row, response, 0.7)
        torch.testing.assert_close(
            got[i, width - len(response) :].double(),
            torch.tensor(want, dtype=torch.float64),
            atol=1e-4,
            rtol=0,
        )


def test_token_logprobs_plain_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    want = 2.0 / 0.5 - torch.logsumexp(torch.tensor([2.0, 4.0, 6.0]), 0)
    assert torch.isclose(token_logprobs(logits, torch.tensor([1]), 0.5)[0], want)


def test_forward_and_backward_reach_the_vision_tower(tiny_model_dir):
    model, io = load_policy(str(tiny_model_dir))
    model.train()
    batch = io.encode(rows(), [[40, 41], [42], [43, 44, 45]])
    loss = -response_logprobs(model, batch).sum()
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("model.visual.")]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
