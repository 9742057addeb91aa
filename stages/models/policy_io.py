"""Turning prompt rows (and sampled responses) into model inputs, and token ids back into text.

Every stage that runs a policy goes through a ``PolicyIO``: rollout encodes prompts for
``generate``, train encodes prompt + response for the teacher-forced forward that gives the
current log-probs. Both must see exactly the same prompt tokens, image tokens and positions, so the
encoding lives in one place. Two kinds exist: ``VisionIO`` for Qwen2-VL-family models (images
expand into one ``<|image_pad|>`` per vision token) and ``TextIO`` for text-only causal LMs.

Prompt rows follow the prompt contract: ``prompt`` text with one ``<image>`` placeholder per image
in ``images``. Messages get one image part per placeholder, in order, as the paper's framework
builds them, and the chat template is applied with the generation prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stages.errors import MgpoError
from stages.models.processor import QwenVLImageProcessor

PLACEHOLDER = "<image>"
# Vision markers a policy must never sample: a stray <|image_pad|> breaks the next forward
# ("image features and image tokens do not match"); the others are meaningless in a response.
VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Batch:
    """Padded model inputs for a list of rows.

    ``inputs`` go to the model as keyword arguments. With responses, ``response_mask`` is True on
    the response tokens; the logits predicting token ``t`` sit at position ``t - 1``.
    """

    inputs: dict[str, torch.Tensor]
    prompt_lengths: list[int]
    response_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: v.to(device) for k, v in self.inputs.items()}
        mask = None if self.response_mask is None else self.response_mask.to(device)
        return Batch(moved, self.prompt_lengths, mask)


def split_prompt(prompt: str) -> list[dict[str, str]]:
    """User content parts: text pieces and one image part per ``<image>``, in order."""
    parts: list[dict[str, str]] = []
    for i, text in enumerate(prompt.split(PLACEHOLDER)):
        if i:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return parts


def _row_id(row: Mapping[str, Any], index: int) -> str:
    return str(row.get("id", f"#{index}"))


def _pad(rows: list[list[int]], value: int, side: str) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if side == "left":
                out[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            else:
                out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _assemble(
    ids: list[list[int]],
    extra: dict[str, list[list[int]]],
    responses: Sequence[Sequence[int]] | None,
    pad_id: int,
    side: str,
) -> tuple[dict[str, torch.Tensor], list[int], torch.Tensor | None]:
    """Append responses, pad everything to one width, build the attention and response masks."""
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {side!r}")
    prompt_lengths = [len(r) for r in ids]
    if responses is not None:
        if len(responses) != len(ids):
            raise ValueError(f"{len(responses)} responses for {len(ids)} rows")
        ids = [p + list(map(int, r)) for p, r in zip(ids, responses, strict=True)]
        extra = {
            k: [v + [0] * len(r) for v, r in zip(vals, responses, strict=True)]
            for k, vals in extra.items()
        }
    inputs = {"input_ids": _pad(ids, pad_id, side)}
    inputs["attention_mask"] = _pad([[1] * len(r) for r in ids], 0, side)
    for key, vals in extra.items():
        inputs[key] = _pad(vals, 0, side)
    mask = None
    if responses is not None:
        mask = _pad(
            [[0] * p + [1] * len(r) for p, r in zip(prompt_lengths, responses, strict=True)],
            0,
            side,
        )
        mask = mask.bool()
    return inputs, prompt_lengths, mask


@dataclass
class PolicyIO:
    """What every IO kind shares: token bookkeeping, decoding, saving the processor."""

    processor: Any
    tokenizer: Any
    stop_token_ids: list[int]
    banned_token_ids: list[int]
    pad_token_id: int
    chat_template: str | None = None
    name: str = field(default="policy")

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def prompt_text(self, row: Mapping[str, Any]) -> str:
        """The prompt as the model sees it: chat template applied, generation prompt added."""
        return self.tokenizer.apply_chat_template(
            self.messages(row),
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

    def encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        responses: Sequence[Sequence[int]] | None = None,
        *,
        padding_side: str = "left",
    ) -> Batch:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the processor (or tokenizer) files next to a checkpoint's weights."""
        self.processor.save_pretrained(str(folder))


@dataclass
class VisionIO(PolicyIO):
    """Qwen2-VL / Qwen2.5-VL: images become ``<|image_pad|>`` runs sized by the image grid."""

    encoder: QwenVLImageProcessor | None = None

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": split_prompt(str(row["prompt"]))}]

    def encode(self, rows, responses=None, *, padding_side="left") -> Batch:
        texts, images = [], []
        for i, row in enumerate(rows):
            row_images = list(row.get("images") or [])
            placeholders = str(row["prompt"]).count(PLACEHOLDER)
            if placeholders != len(row_images):
                raise MgpoError(
                    f"prompt row {_row_id(row, i)}: {placeholders} '<image>' placeholders"
                    f" but {len(row_images)} images"
                )
            texts.append(self.prompt_text(row))
            images.extend(im.convert("RGB") if im.mode != "RGB" else im for im in row_images)
        out = self.encoder(texts, images or None)
        extra = {"mm_token_type_ids": out["mm_token_type_ids"]}
        inputs, lengths, mask = _assemble(
            out["input_ids"], extra, responses, self.pad_token_id, padding_side
        )
        if images:
            inputs["pixel_values"] = out["pixel_values"]
            inputs["image_grid_thw"] = out["image_grid_thw"]
        return Batch(inputs, lengths, mask)


@dataclass
class TextIO(PolicyIO):
    """Text-only causal LMs: the prompt text is the user message; rows with images are refused."""

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": str(row["prompt"])}]

    def prompt_text(self, row: Mapping[str, Any]) -> str:
        if not self.chat_template:  # a base model: the prompt text as it is
            return str(row["prompt"])
        return super().prompt_text(row)

    def encode(self, rows, responses=None, *, padding_side="left") -> Batch:
        for i, row in enumerate(rows):
            if row.get("images"):
                raise MgpoError(
                    f"prompt row {_row_id(row, i)} has images but model {self.name} is text-only"
                )
        texts = [self.prompt_text(row) for row in rows]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        inputs, lengths, mask = _assemble(ids, {}, responses, self.pad_token_id, padding_side)
        return Batch(inputs, lengths, mask)


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` if the tokenizer has it as one token, else None."""
    if token not in tokenizer.get_vocab():
        return None
    return int(tokenizer.convert_tokens_to_ids(token))


def _ids(values: Any) -> list[int]:
    if values is None:
        return []
    return [int(v) for v in (values if isinstance(values, (list, tuple)) else [values])]


def special_ids(tokenizer: Any, model_config: Any, generation_config: Any, vision: bool) -> dict:
    """Stop ids, banned ids (vision markers; ids past the tokenizer's end) and the pad id."""
    stops = _ids(getattr(generation_config, "eos_token_id", None)) + _ids(tokenizer.eos_token_id)
    stops += [i for t in STOP_TOKENS if (i := _token_id(tokenizer, t)) is not None]
    stops = list(dict.fromkeys(stops))
    banned: list[int] = []
    if vision:
        for key in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            banned += _ids(getattr(model_config, key, None))
        banned += [i for t in VISION_TOKENS if (i := _token_id(tokenizer, t)) is not None]
    vocab_size = model_config.get_text_config().vocab_size
    banned += list(range(len(tokenizer), vocab_size))
    banned = sorted(set(banned) - set(stops))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = _ids(getattr(generation_config, "pad_token_id", None))[:1] or stops[:1] or [0]
        pad = pad[0]
    return {"stop_token_ids": stops, "banned_token_ids": banned, "pad_token_id": int(pad)}


def vision_io(processor: Any, model_config: Any, generation_config: Any, name: str) -> VisionIO:
    encoder = (
        processor
        if isinstance(processor, QwenVLImageProcessor)
        else QwenVLImageProcessor(
            processor.image_processor,
            processor.tokenizer,
            getattr(processor, "chat_template", None),
        )
    )
    if not encoder.chat_template:
        raise MgpoError(f"model {name}: its processor has no chat template")
    ids = special_ids(encoder.tokenizer, model_config, generation_config, vision=True)
    return VisionIO(
        processor=processor,
        tokenizer=encoder.tokenizer,
        chat_template=encoder.chat_template,
        name=name,
        encoder=encoder,
        **ids,
    )


def text_io(tokenizer: Any, model_config: Any, generation_config: Any, name: str) -> TextIO:
    ids = special_ids(tokenizer, model_config, generation_config, vision=False)
    return TextIO(
        processor=tokenizer,
        tokenizer=tokenizer,
        chat_template=getattr(tokenizer, "chat_template", None),
        name=name,
        **ids,
    )
