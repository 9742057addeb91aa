"""The hf rollout engine on an FSDP-sharded policy: every process generates, in lockstep.

Under FSDP2 a decoder layer's weights exist whole only while the layer runs: each of its
forwards gathers them from all processes (a collective). Generating on one process alone, or
calling ``generate`` outside the root module's forward, cannot work (the root's own weights stay
sharded: "mixed Tensor and DTensor"). So every process generates its own rows, and all run the
same forwards in the same order (the ``synced_gpus`` idea):

- ``generate`` (and the engine's prefill of shared prompts before it) runs inside the root's
  forward (``LogprobModel(Generate(...))``), as FSDP expects of any forward: the root's weights
  (embeddings, final norm, ``lm_head``, the vision merger) are gathered once for the whole call;
- transformers' ``synced_gpus``: a process that has finished keeps running forwards until all
  have; and a process with fewer micro-batches runs idle ones (``most``, ``HFEngine``);
- the vision tower runs only where a batch has images, so its blocks are gathered at the start
  of each ``generate`` call, on every process, and kept whole until its end (no collective inside
  them while generating). They hold the tower's weights in the compute dtype meanwhile.

Afterwards every block is sharded again and FSDP's per-iteration bookkeeping is reset, so the
update's backward prefetches as if no generation had happened. Under DDP (or one process without
FSDP) no lockstep is needed: every process holds the whole model and generates on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from stages.train.dist import Distributed
from stages.train.forward import Generate
from stages.train.sharding import blocks


class ShardedGeneration:
    """The ``Lockstep`` of :class:`~stages.rollout.HFEngine` for an FSDP-sharded
    :class:`~stages.train.forward.LogprobModel` (``root``)."""

    def __init__(self, root: nn.Module, dist: Distributed) -> None:
        self.root = root
        self.dist = dist
        vision = [m for name, m in root.model.named_modules() if "visual" in name.split(".")]
        self.vision_blocks = [block for block in blocks(root.model) if block in vision]

    def most(self, count: int) -> int:
        return int(self.dist.max([float(count)])[0])

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        try:
            yield
        finally:
            self._reshard()

    def run(self, call: Callable[[], Any]) -> Any:
        return self.root(Generate(call, within=self._vision_whole))

    @contextlib.contextmanager
    def _vision_whole(self) -> Iterator[None]:
        """The vision blocks gathered, and kept whole through their forwards (entered inside
        the root's forward, so FSDP has set the root up first)."""
        for block in self.vision_blocks:
            block.unshard()
            block.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for block in self.vision_blocks:
                block.set_reshard_after_forward(True, recurse=False)
                block.reshard()

    def _reshard(self) -> None:
        """Every module sharded again, and the forward order FSDP recorded while generating
        dropped (the update's backward prefetches by it)."""
        reset = getattr(self.root, "reset_iter_state", None)  # torch >= 2.13
        if reset is not None:
            reset()
            return
        for module in self.root.modules():
            if hasattr(module, "reshard"):
                module.reshard()
