"""Policy-optimisation losses: the registry (DESIGN.md §4).

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

Options shared by several losses are applied here, around the function
(:mod:`stages.train.losses.modifiers`): the high-entropy token mask (``entropy_top``, token-level
losses) and the rollout/trainer mismatch correction (``rollout_correction``, every loss).

Numerics: bf16/fp16 inputs are computed in float32 (float64 stays float64). Log-ratios are clamped
to ``±LOG_RATIO_CAP`` before ``exp`` (as verl does), so a diverged batch gives huge but finite
ratios instead of inf/NaN; inside that range the maths is exact.

Use :func:`compute_loss` (validates options and raises :class:`MgpoError` on bad user input) or
call the functions directly (without the shared options).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from stages.errors import MgpoError
from stages.train.losses import modifiers
from stages.train.losses.catalog import ABOUT, NORMALISERS, TRAINER_OPTIONS
from stages.train.losses.cispo import cispo_loss
from stages.train.losses.clipped import dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss
from stages.train.losses.gmpo import gmpo_loss
from stages.train.losses.gpg import gpg_loss
from stages.train.losses.mgpo import (
    SELECTIONS,
    UNCERTAINTIES,
    blend_weights,
    check_alpha_beta,
    is_real,
    mgpo_loss,
)
from stages.train.losses.sapo import sapo_loss
from stages.train.losses.selection import selection_counts, token_ranks, top_count
from stages.train.losses.shared import LOG_RATIO_CAP, Metrics, finish

LossFn = Callable[..., tuple[Tensor, Metrics]]

__all__ = [
    "ABOUT",
    "ADVANTAGE_ESTIMATOR",
    "ALGORITHMS",
    "LOG_RATIO_CAP",
    "blend_weights",
    "catalog",
    "check_options",
    "cispo_loss",
    "compute_loss",
    "dapo_loss",
    "dr_grpo_loss",
    "gmpo_loss",
    "gpg_loss",
    "grpo_loss",
    "gspo_loss",
    "mgpo_loss",
    "options",
    "sapo_loss",
    "selection_counts",
    "token_ranks",
    "top_count",
]

ALGORITHMS: dict[str, LossFn] = {
    "grpo": grpo_loss,
    "gspo": gspo_loss,
    "mgpo": mgpo_loss,
    "dapo": dapo_loss,
    "dr_grpo": dr_grpo_loss,
    "gpg": gpg_loss,
    "sapo": sapo_loss,
    "cispo": cispo_loss,
    "gmpo": gmpo_loss,
}
"""Loss function per algorithm name (the ``--algo`` values)."""

ADVANTAGE_ESTIMATOR: dict[str, str] = {
    "grpo": "group_norm",
    "gspo": "group_norm",
    "mgpo": "group_norm",
    "dapo": "group_norm",
    "dr_grpo": "mean_only",
    "gpg": "mean_only",
    "sapo": "group_norm",
    "cispo": "group_norm",
    "gmpo": "group_norm",
}
"""Default advantage estimator per algorithm (keys of ``advantages.ESTIMATORS``)."""

TOKEN_LEVEL = frozenset({"grpo", "dapo", "dr_grpo", "gpg", "sapo", "cispo"})
"""Losses whose every token stands alone: they take the high-entropy mask. Masking tokens out of
GSPO, GMPO or MGPO would also change what their sequence ratio averages over."""

ENTROPY_MASK = {"entropy_top": None, "entropy_threshold": None}
ROLLOUT_CORRECTION = {"rollout_correction": "none", "rollout_correction_max": 2.0}
_TENSOR_OPTIONS = frozenset({"ref_logp", "entropy", "engine_logp"})
_CHOICES = {
    "uncertainty": UNCERTAINTIES,
    "selection": SELECTIONS,
    "rollout_correction": modifiers.CORRECTIONS,
}
_MAY_BE_NONE = NORMALISERS | {"entropy_top", "clip_ratio_c"}


def options(name: str) -> dict[str, Any]:
    """Keyword options of an algorithm with their defaults (tensor inputs excluded): those of
    its function and the shared ones that apply to it."""
    fn = _lookup(name)
    own = {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _TENSOR_OPTIONS
    }
    shared = {**(ENTROPY_MASK if name in TOKEN_LEVEL else {}), **ROLLOUT_CORRECTION}
    return {**own, **shared}


def catalog() -> list[dict[str, Any]]:
    """Every registered loss: name, user options with defaults (the trainer's normalisers left
    out), paper and formula; what ``mgpo train --list-algos`` prints."""
    return [
        {
            "name": name,
            "options": {k: v for k, v in options(name).items() if k not in TRAINER_OPTIONS},
            "paper": ABOUT[name].paper,
            "formula": ABOUT[name].formula,
        }
        for name in ALGORITHMS
    ]


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
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise MgpoError(
                f"{name}: option {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}"
            )
        return value
    if key == "alpha" and isinstance(value, str) and value.strip() == "dyn":
        return "dyn"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise MgpoError(f"{name}: option {key} must be a number, got {value!r}") from None
    if value is None and key in _MAY_BE_NONE:
        return None
    if not is_real(value):
        raise MgpoError(f"{name}: option {key} must be a finite number, got {value!r}")
    value = float(value)
    _check_range(name, key, value)
    return value


def _check_range(name: str, key: str, value: float) -> None:
    ratio_space = key == "eps_low" and name != "gmpo"  # gmpo's eps are bounds on log r
    if ratio_space and not 0.0 <= value <= 1.0:
        raise MgpoError(f"{name}: option eps_low must be in [0, 1], got {value}")
    if key in ("eps_low", "eps_high", "kl_coef", "alpha_age") and value < 0.0:
        raise MgpoError(f"{name}: option {key} must be >= 0, got {value}")
    positive = ("num_seqs", "num_tokens", "max_len", "padded_width", "tau_pos", "tau_neg")
    if key in positive and value <= 0.0:
        raise MgpoError(f"{name}: option {key} must be > 0, got {value}")
    if key == "entropy_top" and not 0.0 < value <= 1.0:
        raise MgpoError(f"{name}: option entropy_top must be in (0, 1], got {value}")
    if key == "clip_ratio_c" and value <= 1.0:
        raise MgpoError(f"{name}: option clip_ratio_c (dual-clip) must be > 1, got {value}")
    if key == "rollout_correction_max" and value < 1.0:
        raise MgpoError(
            f"{name}: option rollout_correction_max must be >= 1 (a lower cap would also cut "
            f"tokens where trainer and engine agree), got {value}"
        )


def check_options(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validated options (unknown ones and cross-option conflicts are one-line errors)."""
    fn_options = options(name)
    allowed = fn_options.keys() | _TENSOR_OPTIONS
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if key not in allowed:
            raise MgpoError(
                f"algorithm '{name}' has no option '{key}' (options: {', '.join(sorted(allowed))})"
            )
        clean[key] = _coerce(name, key, value)
    if "alpha" in clean or "beta" in clean:
        check_alpha_beta(clean.get("alpha", 0.5), clean.get("beta", 0.5))
    if clean.get("selection") == "paper" and clean.get("alpha") == "dyn":
        raise MgpoError(f"{name}: selection=paper transcribes the paper's fixed-alpha listing")
    mode = clean.get("rollout_correction", "none")
    if name == "gmpo" and mode.startswith("token"):
        raise MgpoError(
            f"gmpo has one ratio per response: use rollout_correction sequence_truncate or "
            f"sequence_mask, not {mode}"
        )
    return clean


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
    clean = check_options(name, params)
    if clean.get("kl_coef", 0.0) and clean.get("ref_logp") is None:
        raise MgpoError(f"{name}: kl_coef > 0 needs reference log-probs (ref_logp)")
    if clean.get("uncertainty") == "entropy" and clean.get("entropy") is None:
        raise MgpoError(f"{name}: uncertainty=entropy needs the token entropies")
    rho = clean.pop("entropy_top", None)
    threshold = clean.pop("entropy_threshold", None)
    mode = clean.pop("rollout_correction", "none")
    cap = clean.pop("rollout_correction_max", 2.0)
    engine_logp = clean.pop("engine_logp", None)
    entropy = clean.get("entropy")
    loss_mask, extra = mask, {}
    if rho is not None:
        if entropy is None:
            raise MgpoError(f"{name}: entropy_top needs the token entropies")
        if threshold is None:
            threshold = modifiers.entropy_threshold(entropy, mask, rho)
        loss_mask = modifiers.keep_high_entropy(entropy, mask, threshold)
        extra.update(_entropy_metrics(entropy, mask, loss_mask, threshold))
    if mode != "none":
        if engine_logp is None:
            raise MgpoError(f"{name}: rollout_correction {mode} needs the engine's log-probs")
        weights, capped = modifiers.rollout_weights(old_logp, engine_logp, mask, mode, cap)
        advantages = modifiers.correct_advantages(advantages, weights)
        extra.update(modifiers.correction_metrics(weights, capped, loss_mask))
    loss, metrics = fn(logp, old_logp, advantages, loss_mask, **clean)
    if extra:
        metrics.update(finish(loss, extra)[1])
    return loss, metrics


def _entropy_metrics(
    entropy: Tensor, mask: Tensor, kept: Tensor, threshold: float
) -> dict[str, Tensor | float]:
    """Over all valid tokens (the loss's own metrics cover only the kept ones): their count,
    mean entropy, the fraction kept, and the threshold."""
    with torch.no_grad():
        mf = mask.to(torch.float64)
        n = mf.sum()
        return {
            "tokens_valid": n,
            "entropy": (entropy.detach().to(torch.float64) * mf).sum() / n.clamp(min=1),
            "entropy_kept_frac": kept.to(torch.float64).sum() / n.clamp(min=1),
            "entropy_threshold": threshold if n > 0 else 0.0,
        }
