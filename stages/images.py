"""Images as the models expect them: opened with one clear error, RGB, with a pixel count inside
``[min_pixels, max_pixels]``.

Shared by every stage that reads or builds prompt shards (``prepare`` for training data, ``eval``
for benchmarks, ``rollout`` and ``train`` decoding prompt rows), so all open images by the same
rule and size them by the same rule.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from stages.errors import MgpoError

# What PIL raises for bytes that are not a (whole) image: unknown format, truncated data, a
# header declaring more pixels than PIL decodes (``DecompressionBombError``), bad chunk lengths.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_image(value: Any, base: Path | None, where: str) -> Image.Image:
    """Open and fully decode an image given as PIL, a Hugging Face ``{bytes, path}`` struct,
    bytes or a path (relative to ``base``); anything else or anything unreadable is one
    ``MgpoError`` line starting with ``where`` (which names the file, row and column)."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(_resolve(value["path"], base, where))
        elif isinstance(value, bytes | bytearray) and value:
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, str) and value:
            image = Image.open(_resolve(value, base, where))
        else:
            raise MgpoError(f"{where}: empty image (no bytes and no path)")
        image.load()
    except _DECODE_ERRORS as error:
        if isinstance(error, Image.DecompressionBombError):
            reason = f"too many pixels to decode safely ({error})"
        elif isinstance(error, UnidentifiedImageError):
            reason = "not an image format PIL can read"
        else:
            reason = f"{error.__class__.__name__}: {error}"
        raise MgpoError(f"{where}: unreadable image ({reason})") from None
    if image.width == 0 or image.height == 0:
        raise MgpoError(f"{where}: zero-sized image")
    return image


def image_size(value: Any, where: str) -> tuple[int, int]:
    """(width, height) of an image from its header only (nothing is decoded), for counting a
    prompt's vision tokens cheaply; a PIL image, an image struct, bytes or a path."""
    if isinstance(value, Image.Image):
        return value.size
    data = value.get("bytes") if isinstance(value, dict) else value
    try:
        if isinstance(data, bytes | bytearray) and data:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, str) and path:
            with Image.open(_resolve(path, None, where)) as image:
                return image.size
    except _DECODE_ERRORS as error:
        raise MgpoError(f"{where}: unreadable image ({error.__class__.__name__})") from None
    raise MgpoError(f"{where}: empty image (no bytes and no path)")


def _resolve(path: str, base: Path | None, where: str) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute() and base is not None:
        candidate = base / candidate
    if not candidate.is_file():
        raise MgpoError(f"{where}: image file {candidate} not found")
    if candidate.stat().st_size == 0:
        raise MgpoError(f"{where}: image file {candidate} is empty")
    return candidate


def fit_pixels(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Convert to RGB and rescale (keeping the aspect ratio) so width*height is within bounds.

    Like the paper's framework, images are resized before rollout so the vision tower never sees
    absurdly small or large inputs; the processor then only snaps to its patch grid.
    """
    image = image.convert("RGB")
    pixels = image.width * image.height
    if pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
    elif pixels < min_pixels:
        scale = math.sqrt(min_pixels / pixels)
    else:
        return image
    # Round towards the inside of the bounds: flooring an upscaled size would land just below
    # ``min_pixels`` (e.g. 64x48 -> 591x443 = 261,813 < 262,144).
    rounding = math.ceil if pixels < min_pixels else math.floor
    size = (max(1, rounding(image.width * scale)), max(1, rounding(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def prompt_row(row: dict[str, Any]) -> dict[str, Any]:
    """A prompts-shard row as the in-memory prompt contract: decoded RGB images, parsed meta.

    A bad image or meta is one ``MgpoError`` naming the prompt id and column; callers that know
    the shard set add the part and row (``ShardSet.where``)."""
    name = f"prompt {row.get('id')!r}"
    try:
        meta = json.loads(row["meta"]) if row.get("meta") else {}
    except ValueError as error:
        raise MgpoError(f"{name}: column 'meta' is not JSON ({error})") from None
    images = [
        load_image(image, None, f"{name}: column 'images'[{i}]").convert("RGB")
        for i, image in enumerate(row.get("images") or [])
    ]
    return {**row, "images": images, "meta": meta}
