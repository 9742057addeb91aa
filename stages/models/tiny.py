"""The built-in ``tiny`` model: a random Qwen2.5-VL-architecture policy that trains on a CPU.

It is what tests and the offline quick start run, so it must exist without any download: the
tokenizer is a byte-level BPE whose merges are learnt here from a fixed corpus (the built-in
``shapes`` task's wording, the answer format, digits), the weights come from a seed. The result
is saved once into a cache folder and from then on loads like any local model folder.

The vocabulary is small (512 ids) so a model with a 64-wide residual stream can learn quickly;
digits are always single tokens (as in Qwen), and ``<think>``, ``</think>`` and ``\\boxed{`` are
single (non-special) tokens so the answer format costs the policy three easy choices.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stages.errors import MgpoError

# Bump when anything below changes what gets built: the cache folder name includes it.
TINY_VERSION = 1
VOCAB_SIZE = 512
IMAGE_PATCH = 14
IMAGE_MERGE = 2
# 28x28 pixels is one vision token after the 2x2 merge; 112x112 caps an image at 16 tokens.
MIN_PIXELS = 28 * 28
MAX_PIXELS = 112 * 112

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
FORMAT_TOKENS = ("<think>", "</think>", "\\boxed{")

# Qwen2-VL's chat template in structure (default system turn, one vision block per image part).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink")
_KINDS = ("circle", "square", "triangle", "rectangle", "star", "hexagon", "pentagon", "shape")
_WORDS = (
    "How many What Which Find Choose the a an is are there of in on and or with each from this that"
    " colour color kind area perimeter count number total side length width height radius angle"
    " degrees units unit squares grid filled image picture figure shown below above left right"
    " most largest smallest more fewer than equal answer Answer word one two three four five"
    " question Question step think reasoning final so it has have be let us first then we see"
    " A B C D E x y z AB BC CD AC triangle line segment point value find compute solve"
)
_CORPUS = (
    (20, "You are a helpful assistant."),
    (20, "system user assistant"),
    (
        20,
        "You FIRST think about the reasoning process as an internal monologue and then provide the"
        " final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final"
        " answer MUST BE put in \\boxed{}.",
    ),
    (20, "Answer with one word or number."),
    (20, "What colour is the shape? What shape is this? How many shapes are there?"),
    (20, "The grid has unit squares. What is the area of the filled rectangle?"),
    (10, "Choose from: " + ", ".join(_COLOURS) + "."),
    (10, "Choose from: circle, square, triangle."),
    (5, "<think> The shape is red. </think> \\boxed{red}"),
    (5, "<think> I count 3 shapes. </think> The answer is \\boxed{3}"),
    (2, "+ - * / = ( ) [ ] { } ^ _ < > , . : ; ? ! \\frac{1}{2} \\sqrt{2} \\pi \\times \\angle"),
    (1, "0 1 2 3 4 5 6 7 8 9 10 12 16 24 36 45 60 90 180 360 3.14 0.5 x^2 2x+1 = 7"),
)


def _corpus_lines() -> list[tuple[int, str]]:
    """The weighted text the tokenizer learns its merges from (fixed, so merges are fixed)."""
    lines = list(_CORPUS)
    for colour in _COLOURS:
        for kind in _KINDS:
            lines.append((2, f"How many {colour} {kind}s are there? The {kind} is {colour}."))
    lines.append((3, _WORDS))
    # answers right after \boxed{ have no leading space: make the bare words tokens too
    lines.append((30, " ".join(f"\\boxed{{{w}}}" for w in (*_COLOURS, *_KINDS[:3]))))
    return lines


def learn_bpe_merges(words: Counter, n_merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair first).

    ``words`` maps a tuple of symbols to its frequency. Deterministic by construction (no hash
    order anywhere), which a hash-map based trainer does not promise.
    """
    vocab = {tuple(word): count for word, count in sorted(words.items())}
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter = Counter()
        for word, count in vocab.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        if best[1] < min_count:
            break
        left, right = best[0]
        merges.append((left, right))
        merged: dict[tuple[str, ...], int] = {}
        for word, count in vocab.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
                    out.append(left + right)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        vocab = merged
    return merges


def build_tiny_tokenizer():
    """A Qwen2 tokenizer (byte-level BPE, Qwen's pre-tokenizer) with merges learnt locally."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(alphabet)}, merges=[])
    pre = base.backend_tokenizer.pre_tokenizer
    norm = base.backend_tokenizer.normalizer
    words: Counter = Counter()
    for weight, line in _corpus_lines():
        for token in FORMAT_TOKENS:  # format tokens are added whole: learn merges between them
            line = line.replace(token, "\0")
        for segment in line.split("\0"):
            for piece, _ in pre.pre_tokenize_str(norm.normalize_str(segment)):
                words[tuple(piece)] += weight
    n_merges = VOCAB_SIZE - len(alphabet) - len(SPECIAL_TOKENS) - len(FORMAT_TOKENS)
    merges = learn_bpe_merges(words, n_merges)
    vocab = {c: i for i, c in enumerate(alphabet)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges),
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
    )
    tokenizer.add_tokens(list(FORMAT_TOKENS))
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_image_processor():
    """Qwen2-VL image preprocessing (PIL backend: no torchvision needed) at a tiny pixel budget."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=IMAGE_PATCH,
        merge_size=IMAGE_MERGE,
        temporal_patch_size=2,
    )


def tiny_config(tokenizer):
    """Qwen2.5-VL with a 2-layer, 64-wide language model and a 2-block, 32-wide vision tower."""
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": IMAGE_PATCH,
        "spatial_merge_size": IMAGE_MERGE,
        "temporal_patch_size": 2,
        "window_size": 56,  # 2x2 merged tokens per attention window, as Qwen2.5-VL windows
        "fullatt_block_indexes": [1],
        "out_hidden_size": 64,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _tiny_vision(seed: int, head_dim: int | None = None) -> tuple[Any, Any]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from stages.models.processor import QwenVLImageProcessor

    tokenizer = build_tiny_tokenizer()
    processor = QwenVLImageProcessor(build_tiny_image_processor(), tokenizer, CHAT_TEMPLATE)
    config = tiny_config(tokenizer)
    if head_dim is not None:  # same width, fewer and wider heads
        text = config.text_config
        heads, scale = text.hidden_size // head_dim, head_dim // 16
        text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, heads, head_dim
        # mrope sections split head_dim / 2 rotary frequencies as 2:3:3, like the default's [2, 3, 3]
        text.rope_parameters = {
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": [2 * scale, 3 * scale, 3 * scale],
        }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model, processor


def _tiny_vision_h32(seed: int) -> tuple[Any, Any]:
    """The vision model with 2 heads of 32: vLLM's CPU attention has no head size 16."""
    return _tiny_vision(seed, head_dim=32)


def tiny_text_config(tokenizer):
    """The tiny language model alone (a Qwen2 causal LM): same width, depth and tokenizer."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=True,
    )


def _tiny_text(seed: int) -> tuple[Any, Any]:
    """The same tokenizer and language model size without a vision tower (a Qwen2 causal LM)."""
    from transformers import Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = tiny_text_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model, tokenizer


KINDS: dict[str, Callable[[int], tuple[Any, Any]]] = {
    "vision": _tiny_vision,
    "vision-h32": _tiny_vision_h32,
    "text": _tiny_text,
}


def builtin_config(kind: str = "vision") -> Any:
    """The config of a built-in tiny model (``vision`` or ``text``) without building its weights:
    what the memory plan reads when the model is not in the cache yet."""
    tokenizer = build_tiny_tokenizer()
    return tiny_text_config(tokenizer) if kind == "text" else tiny_config(tokenizer)


def _write_tiny(folder: Path, seed: int, kind: str) -> None:
    from transformers import GenerationConfig

    from stages.models.quiet import quiet_transformers

    model, processor = KINDS[kind](seed)
    tokenizer = getattr(processor, "tokenizer", processor)
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config = GenerationConfig(
        bos_token_id=stop[1], eos_token_id=stop, pad_token_id=stop[1]
    )
    with quiet_transformers():
        model.to(torch.float32).save_pretrained(str(folder))
        processor.save_pretrained(str(folder))


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, kind: str = "vision") -> Path:
    """Build the tiny model into ``out_dir`` unless it is already there; return the folder.

    ``kind`` is ``vision`` (Qwen2.5-VL, the default), ``vision-h32`` (the same with 2 heads of
    32, which vLLM's CPU attention supports) or ``text`` (a Qwen2 causal LM of the same size and
    tokenizer). Written to a temporary sibling and renamed into place, so a folder that
    exists is complete (two processes building at once: the second rename loses, its copy goes).
    """
    if kind not in KINDS:
        raise MgpoError(f"unknown tiny model kind '{kind}' (one of {', '.join(KINDS)})")
    target = Path(out_dir).expanduser()
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_tiny(scratch, seed, kind)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise MgpoError(f"cannot create the tiny model folder {target}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def cache_root() -> Path:
    """``$MGPO_CACHE`` or ``~/.cache/mgpo``."""
    return Path(os.environ.get("MGPO_CACHE") or Path.home() / ".cache" / "mgpo").expanduser()


def tiny_model_path(
    seed: int = 0, root: str | os.PathLike | None = None, kind: str = "vision"
) -> Path:
    """The cached tiny model for ``seed`` (built on first use)."""
    return build_tiny_model(tiny_folder(seed, root, kind), seed=seed, kind=kind)


def tiny_folder(seed: int = 0, root: str | os.PathLike | None = None, kind: str = "vision") -> Path:
    """Where the tiny model for ``seed`` is cached (it may not be built yet)."""
    base = Path(root).expanduser() if root is not None else cache_root()
    name = "tiny" if kind == "vision" else f"tiny-{kind}"
    return base / f"{name}-v{TINY_VERSION}-seed{seed}"
