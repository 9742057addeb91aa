"""Policies: loading (built-in tiny models, local folders, hub ids, GGUF imports), the processor,
and encoding prompt rows (and responses) into model inputs.

- ``loading``: ``load_policy`` / ``resolve_model`` (model + ``PolicyIO``)
- ``policy_io``: prompt rows -> padded model inputs, token ids -> text
- ``processor``: the Qwen2-VL image processor without torchvision
- ``logprobs``: the reference teacher-forced log-prob definition
- ``tiny``: the built-in random tiny models; ``gguf_import``: GGUF files -> model folders
"""
