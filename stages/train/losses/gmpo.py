"""GMPO (Geometric-Mean Policy Optimization, Zhao et al. 2025, arXiv:2507.20673): optimise the
geometric mean of the token ratios, clipped token by token in log space.

With ``s = sign(A_i)``: ``l_t = s * min(s * log r_t, s * clip(log r_t, -eps_low, eps_high))``
(the pessimistic side of the clip, as PPO's min), ``ratio_i = exp(mean_t l_t)`` and
``L = -(1/N) sum_i ratio_i A_i``. The geometric mean is far less sensitive to one outlying token
ratio than GRPO's arithmetic mean, so the clip range can be wider: ``(e^-0.4, e^0.4)`` by default.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stages.train.losses.shared import (
    Metrics,
    common_metrics,
    count_or_default,
    finish,
    prepare,
    ratio_stats,
    token_log_ratio,
)


def gmpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.4,
    eps_high: float = 0.4,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GMPO: ``-(1/N) sum_i exp(mean_t l_t) A_i`` with the log-space clip above (``eps_low`` and
    ``eps_high`` are bounds on ``log r``, not on ``r``). One advantage per response (``[N]``).

    ``num_seqs`` replaces N (default: rows of this call); a response without valid tokens
    contributes 0. ``clip_frac_high`` / ``clip_frac_low``: valid tokens whose log-ratio the clip
    replaced (A > 0 above ``eps_high``, A < 0 below ``-eps_low``); the ratio statistics describe
    ``ratio_i``, the sequence ratio the loss uses."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    if adv.shape[1] != 1:
        raise ValueError("gmpo takes one advantage per response ([N]), not per token")
    log_r = token_log_ratio(lp, old, mf)
    s = torch.sign(adv)  # [N, 1]
    clipped = log_r.clamp(-eps_low, eps_high)
    kept = torch.minimum(s * log_r, s * clipped)
    ratio = ((s * kept).sum(1, keepdim=True) / lengths.clamp(min=1)[:, None]).exp()  # [N, 1]
    n_seqs = count_or_default(num_seqs, max(lp.shape[0], 1))
    loss = -(ratio[:, 0] * adv[:, 0] * (lengths > 0).to(lp.dtype)).sum() / n_seqs
    n_tok = lengths.sum()
    with torch.no_grad():
        m = common_metrics(loss, loss, mf, n_tok, entropy, None)
        m.update(ratio_stats(ratio, mf, n_tok))
        hit = (s * clipped < s * log_r).to(mf.dtype) * mf
        m["clip_frac_high"] = (hit * (adv > 0)).sum() / n_tok.clamp(min=1)
        m["clip_frac_low"] = (hit * (adv < 0)).sum() / n_tok.clamp(min=1)
    return finish(loss, m)
