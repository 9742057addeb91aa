"""Policy-optimisation losses: GRPO, GSPO, MGPO, DAPO, Dr.GRPO and GPG (DESIGN.md §4).

Every algorithm is one pure function with the same signature::

    fn(logp, old_logp, advantages, mask, *, <keyword options>) -> (loss, metrics)

- ``logp``: ``[N, L]`` current-policy log-probs of the response tokens (carries the gradient);
- ``old_logp``: ``[N, L]`` behaviour-policy log-probs (the rollout's; treated as constants);
- ``advantages``: ``[N]`` (one per response) or ``[N, L]`` (per token), treated as constants;
- ``mask``: ``[N, L]`` bool/0-1, true on valid response tokens. Padding may sit anywhere (left,
  right or holes); values there must be finite and never influence the loss or its gradient.

``loss`` is a 0-d tensor; ``metrics`` is a dict of python floats (detached, one device sync).
Each function spells out its own aggregation; the trainer never re-normalises. For gradient
accumulation over micro-batches pass the *global* normaliser (``num_seqs`` / ``num_tokens`` /
``max_len``) so that the micro-batch losses add up to the full-batch loss.

Numerics: bf16/fp16 inputs are computed in float32 (float64 stays float64). Log-ratios are clamped
to ``±LOG_RATIO_CAP`` before ``exp`` (as verl does), so a diverged batch gives huge but finite
ratios instead of inf/NaN; inside that range the maths is exact.

Use :func:`compute_loss` (validates options and raises :class:`MgpoError` on bad user input) or
call the functions directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor

from stages.errors import MgpoError
from stages.train.losses.clipped import dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss
from stages.train.losses.gpg import gpg_loss
from stages.train.losses.mgpo import (
    blend_weights,
    check_alpha_beta,
    is_real,
    mgpo_loss,
    selection_counts,
    token_ranks,
)
from stages.train.losses.shared import LOG_RATIO_CAP, Metrics

LossFn = Callable[..., tuple[Tensor, Metrics]]

__all__ = [
    "ADVANTAGE_ESTIMATOR",
    "ALGORITHMS",
    "LOG_RATIO_CAP",
    "blend_weights",
    "compute_loss",
    "dapo_loss",
    "dr_grpo_loss",
    "gpg_loss",
    "grpo_loss",
    "gspo_loss",
    "mgpo_loss",
    "options",
    "selection_counts",
    "token_ranks",
]

ALGORITHMS: dict[str, LossFn] = {
    "grpo": grpo_loss,
    "gspo": gspo_loss,
    "mgpo": mgpo_loss,
    "dapo": dapo_loss,
    "dr_grpo": dr_grpo_loss,
    "gpg": gpg_loss,
}
"""Loss function per algorithm name (the ``--algo`` values)."""

ADVANTAGE_ESTIMATOR: dict[str, str] = {
    "grpo": "group_norm",
    "gspo": "group_norm",
    "mgpo": "group_norm",
    "dapo": "group_norm",
    "dr_grpo": "mean_only",
    "gpg": "mean_only",
}
"""Default advantage estimator per algorithm (keys of ``advantages.ESTIMATORS``)."""

_TENSOR_OPTIONS = frozenset({"ref_logp", "entropy"})


def options(name: str) -> dict[str, Any]:
    """Keyword options of an algorithm with their defaults (tensor inputs excluded)."""
    fn = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _TENSOR_OPTIONS
    }


def _lookup(name: str) -> LossFn:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise MgpoError(
            f"unknown algorithm '{name}' (choose one of: {', '.join(ALGORITHMS)})"
        ) from None


def _coerce(name: str, key: str, value: Any) -> Any:
    """Validate one user option; numeric strings (from the CLI or YAML) become floats."""
    if key in _TENSOR_OPTIONS:
        return value
    if key == "alpha" and isinstance(value, str) and value.strip() == "dyn":
        return "dyn"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise MgpoError(f"{name}: option {key} must be a number, got {value!r}") from None
    if value is None and key in ("num_seqs", "num_tokens", "max_len"):
        return None
    if not is_real(value):
        raise MgpoError(f"{name}: option {key} must be a finite number, got {value!r}")
    value = float(value)
    if key == "eps_low" and not 0.0 <= value <= 1.0:
        raise MgpoError(f"{name}: option eps_low must be in [0, 1], got {value}")
    if key in ("eps_high", "kl_coef", "alpha_age") and value < 0.0:
        raise MgpoError(f"{name}: option {key} must be >= 0, got {value}")
    if key in ("num_seqs", "num_tokens", "max_len") and value <= 0.0:
        raise MgpoError(f"{name}: option {key} must be > 0, got {value}")
    return value


def compute_loss(
    name: str,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    **params: Any,
) -> tuple[Tensor, Metrics]:
    """Run algorithm ``name`` with validated options; see the module docstring for the inputs.

    Unknown options are an error (a typo must not silently fall back to a default); use
    :func:`options` to see what an algorithm accepts.
    """
    fn = _lookup(name)
    allowed = options(name).keys() | _TENSOR_OPTIONS
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if key not in allowed:
            raise MgpoError(
                f"algorithm '{name}' has no option '{key}' (options: {', '.join(sorted(allowed))})"
            )
        clean[key] = _coerce(name, key, value)
    if "alpha" in clean or "beta" in clean:
        check_alpha_beta(clean.get("alpha", 0.5), clean.get("beta", 0.5))
    if clean.get("kl_coef", 0.0) and clean.get("ref_logp") is None:
        raise MgpoError(f"{name}: kl_coef > 0 needs reference log-probs (ref_logp)")
    return fn(logp, old_logp, advantages, mask, **clean)
