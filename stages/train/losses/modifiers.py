"""Options every loss shares that change its inputs, not its formula (applied by
:func:`stages.train.algos.compute_loss` around the loss function).

- High-entropy token mask ("Beyond the 80/20 Rule", Wang et al. 2025, arXiv:2506.01939):
  ``entropy_top = rho`` trains only on the tokens whose entropy is in the top ``rho`` of the
  step's valid tokens. The threshold is over *every* valid token of the step (all micro-batches,
  all processes): the trainer computes it once (:func:`entropy_threshold`) and passes it as
  ``entropy_threshold``; a direct call without one uses its own tokens. Kept tokens are the
  loss's mask, so token-mean denominators count only them, as in the paper's code (TRL's
  ``top_entropy_quantile`` zeroes the dropped tokens' loss but keeps them in the denominator).
- Rollout/trainer mismatch correction (truncated / masked importance sampling, "TIS"/"MIS"; Yao
  et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"): the
  engine that sampled (e.g. vLLM in bf16) and the trainer disagree on the log-probs; each token
  (or response) is weighted by ``pi_old_trainer / pi_engine``, truncated at, or masked above,
  ``rollout_correction_max``. The weight is a positive constant, so multiplying the advantage by
  it is the same as multiplying the per-token loss (as verl does), for every loss here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def entropy_threshold(entropy: Tensor, mask: Tensor, rho: float) -> float:
    """The entropy at or above which a valid token is in the top ``rho``: the k-th largest valid
    entropy, ``k = ceil(rho * n)`` (at least 1; rho = 1 keeps every token). Every token tied
    with it is kept too. ``inf`` when there is no valid token. Uses ``kthvalue``, not
    ``torch.quantile`` (which interpolates, and refuses more than 16M values)."""
    values = entropy.detach()[mask.bool()].to(torch.float64)
    n = values.numel()
    if n == 0:
        return math.inf
    k = min(max(1, math.ceil(rho * n - 1e-9)), n)
    return float(torch.kthvalue(values, n - k + 1).values)


def keep_high_entropy(entropy: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """The mask of valid tokens whose entropy is at or above ``threshold``."""
    return mask.bool() & (entropy.detach() >= threshold)


def rollout_weights(
    old_logp: Tensor, engine_logp: Tensor, mask: Tensor, mode: str, cap: float
) -> tuple[Tensor, Tensor]:
    """Importance weights ``pi_old_trainer / pi_engine`` and where they were capped.

    Token modes: ``exp(old_t - engine_t)`` per token (``[N, L]``). Sequence modes: the product
    over the response's valid tokens, ``exp(sum_t (old_t - engine_t))`` (``[N, 1]``).
    ``*_truncate``: ``min(weight, cap)``; ``*_mask``: 0 where ``weight > cap``. Computed in log
    space, so a diverged response gives 0 or ``cap``, never inf. Padding gets weight 1 (unused).
    """
    mf = mask.detach().to(old_logp.dtype)
    log_w = (old_logp.detach() - engine_logp.detach().to(old_logp.dtype)) * mf
    if mode.startswith("sequence"):
        log_w = log_w.sum(1, keepdim=True)
    log_cap = math.log(cap)
    capped = log_w > log_cap
    if mode.endswith("truncate"):
        weights = log_w.clamp(max=log_cap).exp()
    else:
        weights = log_w.clamp(max=log_cap).exp().mul_(~capped)
    return weights, capped


def correct_advantages(advantages: Tensor, weights: Tensor) -> Tensor:
    """Advantages times the rollout weights: ``[N]`` stays ``[N]`` for sequence weights, token
    weights make them ``[N, L]``."""
    adv = advantages.detach().to(weights.dtype)
    if weights.shape[1] == 1:
        return adv * (weights[:, 0] if adv.dim() == 1 else weights)
    return (adv[:, None] if adv.dim() == 1 else adv) * weights


def correction_metrics(weights: Tensor, capped: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mean applied weight and the fraction of tokens truncated or masked, over ``mask``."""
    mf = mask.to(weights.dtype)
    n = mf.sum().clamp(min=1)
    return {
        "rollout_weight_mean": (weights.expand_as(mf) * mf).sum() / n,
        "rollout_capped_frac": (capped.expand_as(mf).to(mf.dtype) * mf).sum() / n,
    }
