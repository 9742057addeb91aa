"""Images as the models expect them: RGB, with a pixel count inside ``[min_pixels, max_pixels]``."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mgpo_cli.errors import MgpoError


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


def load_image(value: Any, base: Path | None, where: str) -> Image.Image:
    """Open an image given as PIL, a Hugging Face ``{bytes, path}`` struct, bytes or a path."""
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
            raise MgpoError(f"{where}: empty image")
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise MgpoError(
            f"{where}: unreadable image ({error.__class__.__name__}: {error})"
        ) from None
    if image.width == 0 or image.height == 0:
        raise MgpoError(f"{where}: zero-sized image")
    return image


def _resolve(path: str, base: Path | None, where: str) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute() and base is not None:
        candidate = base / candidate
    if not candidate.is_file():
        raise MgpoError(f"{where}: image file {candidate} not found")
    if candidate.stat().st_size == 0:
        raise MgpoError(f"{where}: image file {candidate} is empty")
    return candidate
