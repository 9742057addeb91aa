"""How long a prompt is as the policy sees it: chat template, text and image tokens.

A Geometry3K diagram near the 4,194,304-pixel bound is ~5,300 vision tokens for Qwen2.5-VL, so
image tokens, not text, decide whether a prompt fits ``rollout.max_prompt_tokens`` (vLLM's
``max_model_len`` is built from it; the hf engine would silently spend the memory). ``train``,
``rollout`` and ``eval`` count every prompt here before the first step, with the policy's real
tokenizer and chat template and its image processor's own resize rule (``smart_resize``: the
patch grid of each image from its size alone, so no pixel is decoded), and then drop the prompts
that do not fit or stop naming the first. Nothing is ever truncated: cutting a prompt inside an
image breaks the model ("image features and image tokens do not match").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

from stages.errors import MgpoError
from stages.images import image_size, prompt_row
from stages.models.policy_io import PolicyIO, VisionIO

BATCH = 64  # prompts tokenized per call


def prompt_lengths(io: PolicyIO, rows: list[Mapping[str, Any]]) -> list[int]:
    """Prompt tokens of each row (the ``input_ids`` length ``io.encode`` would give)."""
    texts = [io.prompt_text(row) for row in rows]
    ids = io.tokenizer(texts, add_special_tokens=False)["input_ids"]
    if not isinstance(io, VisionIO) or io.encoder is None:
        return [len(row_ids) for row_ids in ids]
    processor = io.encoder.image_processor
    if not hasattr(processor, "get_number_of_image_patches"):  # count the slow, sure way
        return [io.encode([prompt_row(dict(row))]).prompt_lengths[0] for row in rows]
    merge = int(processor.merge_size) ** 2
    out = []
    for row, row_ids in zip(rows, ids, strict=True):
        length = len(row_ids)
        for i, image in enumerate(row.get("images") or []):
            width, height = image_size(image, f"prompt {row.get('id')!r}: column 'images'[{i}]")
            # The template holds one <|image_pad|> per image; the model sees one per token.
            length += processor.get_number_of_image_patches(height, width, {}) // merge - 1
        out.append(length)
    return out


def overlong_prompts(
    io: PolicyIO,
    rows: Iterable[Mapping[str, Any]],
    limit: int,
    where: Callable[[str], str] | None = None,
) -> list[tuple[str, int]]:
    """``(id, tokens)`` of every prompt longer than ``limit`` tokens, in order. ``where`` names a
    prompt's place by its id (``ShardSet.where``) for the error of an unreadable image."""
    found: list[tuple[str, int]] = []
    rows = iter(rows)
    while batch := list(islice(rows, BATCH)):
        try:
            lengths = prompt_lengths(io, batch)
        except MgpoError as error:
            if where is None:
                raise
            bad = next(r for r in batch if _fails(io, r))
            raise MgpoError(f"{where(str(bad['id']))}: {error}") from None
        for row, length in zip(batch, lengths, strict=True):
            if length > limit:
                found.append((str(row["id"]), length))
    return found


def _fails(io: PolicyIO, row: Mapping[str, Any]) -> bool:
    try:
        prompt_lengths(io, [row])
    except MgpoError:
        return True
    return False


def overlong_error(where: str, found: tuple[str, int], option: str, limit: int, advice: str):
    """The one line that stops a run on its first overlong prompt."""
    prompt_id, length = found
    return MgpoError(
        f"{where}: prompt {prompt_id!r} is {length} tokens (images included), more than"
        f" {option} {limit}; {advice}"
    )
