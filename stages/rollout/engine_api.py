"""What a rollout engine returns and promises, whatever its backend (hf, vllm).

``logprobs`` hold one float per response token. By default they are the *policy* log-probs the
trainer also computes, ``log_softmax(logits / T)`` over the full vocabulary at the sampling
temperature (``T = 1`` for greedy decoding), so on-policy importance ratios are exactly 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class Sample:
    """One sampled response. ``response_ids`` include the stop token when ``finish_reason`` is
    ``"stop"`` (the policy must learn to stop), and ``response`` is their text without special
    tokens."""

    response: str
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


class Engine(Protocol):
    def generate(
        self,
        prompt_rows: Sequence[Mapping[str, Any]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 512,
        seed: int = 0,
    ) -> list[list[Sample]]:
        """``n`` samples for each prompt row, in row order."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take new policy weights (by parameter name) without reloading from disk."""
        ...
