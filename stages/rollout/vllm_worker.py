"""Methods mixed into every vLLM worker (``worker_extension_cls``), called by name over RPC.

vLLM runs the model in worker processes (one per tensor-parallel rank) or, colocated with the
trainer, in this process. Calling a method by *name* through ``LLM.collective_rpc`` works in
every layout without shipping pickled code, so what the engine needs inside the worker lives
here. This module must stay importable without importing vLLM at module level: vLLM imports it
inside the worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class MgpoWorkerExtension:
    """What :class:`~stages.rollout.engine_vllm.VLLMEngine` asks of each worker."""

    def mgpo_set_logit_temperature(self: Any, temperature: float) -> int:
        """Divide the model's logits by ``temperature`` (in float32) before vLLM's sampler.

        vLLM reports log-probs either before temperature ("raw") or after bans and top-p
        ("processed"); neither is the policy's ``log_softmax(logits / T)``. With the logits
        already divided by ``T`` and vLLM sampling at temperature 1, the raw log-probs are
        exactly that, and sampling is unchanged. A forward hook on each logits layer does the
        division in float32, as the trainer does (a bf16 division would round once more).
        Returns how many logits layers were set.
        """
        from vllm.model_executor.layers.logits_processor import LogitsProcessor

        count = 0
        for module in self.get_model().modules():
            if isinstance(module, LogitsProcessor):
                if not hasattr(module, "_mgpo_temperature"):
                    module.register_forward_hook(_divide_by_temperature)
                module._mgpo_temperature = float(temperature)
                count += 1
        return count

    def mgpo_load_weights(self: Any, weights: Iterator[tuple[str, Any]]) -> None:
        """Load new weights (transformers names, tensors) into the running model in place.

        Only a colocated engine calls this (its workers run in the trainer's process), so the
        tensors arrive by reference, on the trainer's device, and are pulled one at a time.
        vLLM's layer-wise reload copies each into its parameter (casting to the engine's dtype
        there), puts each layer back together (fused projections, CPU weight packing) once all
        its tensors arrived, and drops its encoder and multimodal caches.
        """
        import logging

        # Layers with nothing to load (rotary caches, a tied head, a frozen part the trainer
        # left out) keep their tensors; vLLM warns about each one on every reload.
        quiet = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        finally:
            quiet.setLevel(level)
        _repack_cpu_lm_heads(self.get_model())


def _repack_cpu_lm_heads(model: Any) -> None:
    """On CPU vLLM packs a copy of the LM head's weight for its matmul kernel at load time.

    With tied embeddings the reload refreshes the shared weight (through the embedding) but never
    repacks the head, which would keep computing logits from the old weights: repack it here.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in model.modules():
        if isinstance(module, ParallelLMHead) and hasattr(module, "cpu_linear"):
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)


def _divide_by_temperature(module: Any, inputs: Any, logits: Any) -> Any:
    """Forward hook: the logits over the temperature set last, in float32 (None: unchanged)."""
    temperature = module._mgpo_temperature
    if logits is None or temperature == 1.0:  # None: a tensor-parallel rank without logits
        return None
    return logits.float() / temperature
