"""The vision-token ban of a vLLM engine: one logits processor for the whole engine.

Token ids a response must never hold (vision markers, ids past the tokenizer: the PolicyIO's
``banned_token_ids``) reach vLLM once, when the engine starts, as
``additional_config["mgpo_banned_token_ids"]``; this processor sets their logits to ``-inf`` in
every step of every request. (Per-request ``allowed_token_ids`` would ship a ~151,600-id list
with each of a step's requests and build a vocabulary-wide mask per request.)

vLLM computes raw log-probs before any logits processor runs, so the ``policy`` log-probs still
cover the full vocabulary, as the trainer's do; the processed ones (``logprobs="sampled"``) are
renormalised over the allowed ids, as before. vLLM imports this module by name inside its
workers (``logits_processors=["stages.rollout.vllm_ban:BanTokens"]``); it imports vLLM.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

CONFIG_KEY = "mgpo_banned_token_ids"
QUALNAME = "stages.rollout.vllm_ban:BanTokens"


class BanTokens(LogitsProcessor):
    """``-inf`` on the engine's banned ids, for every row of every batch."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        ids = (vllm_config.additional_config or {}).get(CONFIG_KEY, [])
        self.banned = torch.tensor(sorted(ids), dtype=torch.long, device=device)

    def is_argmax_invariant(self) -> bool:
        return False  # greedy decoding must skip the banned ids too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Nothing per request: the ban is the same for all."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.banned.numel():
            logits.index_fill_(1, self.banned, float("-inf"))
        return logits
