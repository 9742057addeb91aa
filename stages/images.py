"""Images as the models expect them: RGB, with a pixel count inside ``[min_pixels, max_pixels]``.

Shared by every stage that builds prompt shards (``prepare`` for training data, ``eval`` for
benchmarks), so both hand the policy images sized by the same rule.
"""

from __future__ import annotations

import math

from PIL import Image


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
