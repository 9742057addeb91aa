"""Opening dataset images; sizing them (``fit_pixels``) lives in :mod:`stages.images`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from stages.errors import MgpoError
from stages.images import fit_pixels

__all__ = ["fit_pixels", "load_image"]


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
