"""What a rollout engine returns and promises, whatever its backend (hf, vllm).

``logprobs`` hold one float per response token. By default they are the *policy* log-probs the
trainer also computes, ``log_softmax(logits / T)`` over the full vocabulary at the sampling
temperature (``T = 1`` for greedy decoding), so on-policy importance ratios are exactly 1.

Seeds: sample ``k`` of a prompt is drawn from a random stream of its own, seeded from the call's
seed, the prompt's id and ``k`` (:func:`prompt_seed`), never from a stream shared by a batch. A
prompt's samples therefore do not depend on which prompts share its batch, part or process, nor
on how many processes roll out: only on the seed, the prompt and the sample index (up to float
differences in the logits that batching makes, which can flip a near-tie).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from stages.errors import MgpoError


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

    def sleep(self) -> None:
        """Give the engine's device memory back while the trainer updates (may do nothing)."""
        ...

    def wake(self) -> None:
        """Take the memory back before the next rollout (weights are then handed over anew)."""
        ...


def prompt_seed(seed: int, row: Mapping[str, Any], index: int) -> int:
    """The seed of one prompt's samples (30 bits, so an engine may add the sample index): from
    the call's ``seed`` and the row's ``id`` (its position in the call when it has none)."""
    key = row.get("id")
    key = f"#{index}" if key is None else str(key)
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 2


LOGPROB_MODES = ("policy", "sampled")
"""What an engine reports as ``logprobs``: the policy's ``log_softmax(logits / T)`` over the full
vocabulary (what importance ratios need), or the log-prob under the distribution actually
sampled (after bans and top-p)."""


def check_logprob_mode(mode: str) -> str:
    if mode not in LOGPROB_MODES:
        raise MgpoError(f"logprobs must be one of {', '.join(LOGPROB_MODES)} (got {mode})")
    return mode


def check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
    """The sampling settings every engine accepts, checked before any work (one line each)."""
    if n < 1:
        raise MgpoError(f"-n must be at least 1 (got {n})")
    if temperature < 0:
        raise MgpoError(f"temperature must be >= 0 (got {temperature})")
    if not 0 < top_p <= 1:
        raise MgpoError(f"top_p must be in (0, 1] (got {top_p})")
    if max_new_tokens < 1:
        raise MgpoError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")


def finish_sample(io: Any, ids: list[int], logprobs: list[float]) -> Sample:
    """A ``Sample`` from generated ids: cut after the first stop token (kept: the policy must
    learn to stop) or mark it ``"length"``; the text is decoded without special tokens."""
    stops = set(io.stop_token_ids)
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    if end is None:
        return Sample(io.decode(ids), ids, logprobs[: len(ids)], "length")
    ids = ids[: end + 1]
    return Sample(io.decode(ids), ids, logprobs[: end + 1], "stop")
