"""Keeping transformers quiet on our console while it loads or saves a model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No load reports, fallback warnings or progress bars from transformers on our console."""
    from transformers.utils import logging as hf_logging

    hf_logger = logging.getLogger("transformers")
    level, bars = hf_logger.level, hf_logging.is_progress_bar_enabled()
    hf_logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()
