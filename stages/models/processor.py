"""An image-only Qwen2-VL / Qwen2.5-VL processor, for machines without torchvision.

transformers 5.x builds ``Qwen2_5_VLProcessor`` with a video processor, and the video processor
needs torchvision; on a CPU-only box without it, ``AutoProcessor`` cannot load a Qwen2.5-VL folder
at all. Images alone need only the image processor (its PIL backend), the tokenizer and the chat
template, which is all this class holds. It writes the same files a stock Qwen2.5-VL repository has
(``preprocessor_config.json`` naming ``Qwen2VLImageProcessor`` and ``Qwen2_5_VLProcessor``,
tokenizer files, ``chat_template.jinja``), so where torchvision exists the folder loads as a stock
processor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
STOCK_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
STOCK_IMAGE_PROCESSOR_CLASS = "Qwen2VLImageProcessor"


def image_token_counts(image_grid_thw, merge_size: int) -> list[int]:
    """Placeholder tokens per image, as Qwen2-VL counts them: t*h*w patches / merge_size**2."""
    return [int(t * h * w) // merge_size**2 for t, h, w in image_grid_thw.tolist()]


def expand_image_tokens(
    texts: Sequence[str], counts: Sequence[int], image_token: str = IMAGE_TOKEN
) -> list[str]:
    """Replace the k-th ``image_token`` (counted across all texts, in order) by ``counts[k]`` copies.

    The chat template writes one ``<|image_pad|>`` per image; the model needs one per vision token.
    """
    found = sum(text.count(image_token) for text in texts)
    if found != len(counts):
        raise ValueError(f"{found} image placeholders in the text but {len(counts)} images")
    out: list[str] = []
    k = 0
    for text in texts:
        parts = text.split(image_token)
        pieces = [parts[0]]
        for part in parts[1:]:
            pieces.append(image_token * counts[k])
            pieces.append(part)
            k += 1
        out.append("".join(pieces))
    return out


class QwenVLImageProcessor:
    """Image processor + tokenizer + chat template, laid out like a stock Qwen2.5-VL processor."""

    image_token = IMAGE_TOKEN

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)

    def __call__(self, text: Sequence[str], images: Sequence[Any] | None = None) -> dict[str, Any]:
        """Unpadded ``input_ids`` (lists), ``mm_token_type_ids``, and pixel tensors when images."""
        out: dict[str, Any] = {}
        texts = list(text)
        if images:
            pixels = self.image_processor(images=list(images), return_tensors="pt")
            out["pixel_values"] = pixels["pixel_values"]
            out["image_grid_thw"] = pixels["image_grid_thw"]
            counts = image_token_counts(pixels["image_grid_thw"], self.image_processor.merge_size)
            texts = expand_image_tokens(texts, counts)
        else:
            expand_image_tokens(texts, [])
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        out["input_ids"] = ids
        out["mm_token_type_ids"] = [
            [1 if t == self.image_token_id else 2 if t == self.video_token_id else 0 for t in row]
            for row in ids
        ]
        return out

    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> Any:
        kwargs.setdefault("chat_template", self.chat_template)
        return self.tokenizer.apply_chat_template(conversation, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def save_pretrained(self, save_directory: str | Path) -> None:
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.image_processor.to_dict()
        config["image_processor_type"] = STOCK_IMAGE_PROCESSOR_CLASS
        config["processor_class"] = STOCK_PROCESSOR_CLASS
        (folder / "preprocessor_config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n"
        )
        self.tokenizer.save_pretrained(str(folder))
        if self.chat_template:
            (folder / "chat_template.jinja").write_text(self.chat_template)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> QwenVLImageProcessor:
        """Load the parts from a local folder or hub id (``kwargs`` go to each ``from_pretrained``)."""
        from transformers import AutoImageProcessor, AutoTokenizer

        # Without torchvision, transformers warns that it falls back to the PIL backend: expected.
        hf_logger = logging.getLogger("transformers")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)
        try:
            image_processor = AutoImageProcessor.from_pretrained(str(path), **kwargs)
        finally:
            hf_logger.setLevel(level)
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        hub = {k: v for k, v in kwargs.items() if k in ("revision", "cache_dir", "token")}
        return cls(image_processor, tokenizer, _read_chat_template(str(path), **hub))


def _read_chat_template(path: str, **kwargs: Any) -> str | None:
    """The processor's chat template file (``.jinja``, or the older ``chat_template.json``), if any."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        found = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **kwargs)
        if found:
            text = Path(found).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
