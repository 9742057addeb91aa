"""SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025, arXiv:2511.20347): a smooth,
sign-dependent sigmoid gate on the token ratio instead of a hard clip.

``f(r) = (4 / tau) * sigmoid(tau * (r - 1))`` with ``tau = tau_pos`` where A > 0, else ``tau_neg``;
``L = -(1/N) sum_i (1/|o_i|) sum_t f(r_t) A_i``. Its gradient with respect to the log-prob is
``4 p (1 - p) r A`` with ``p = sigmoid(tau (r - 1))``: exactly the plain policy gradient at r = 1,
fading smoothly (never abruptly, as a clip does) as the ratio leaves 1. A slightly larger
``tau_neg`` damps negative-advantage tokens faster, which the paper found more stable.
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
    sequence_mean,
    token_log_ratio,
)


def sapo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, Metrics]:
    """SAPO: ``-(1/N) sum_i (1/|o_i|) sum_t (4/tau) sigmoid(tau (r_t - 1)) A_i``.

    ``num_seqs`` replaces N (default: rows of this call). Metric ``gate_mean``: the mean over
    valid tokens of the gradient weight ``4 p (1 - p) r`` (1 on-policy; below 1 where the gate
    damps a token)."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    r = token_log_ratio(lp, old, mf).exp()
    positive = (adv > 0).to(lp.dtype)
    tau = positive * tau_pos + (1.0 - positive) * tau_neg  # exact: one term is 0
    gate = torch.sigmoid(tau * (r - 1.0)) * (4.0 / tau)
    n_seqs = count_or_default(num_seqs, max(lp.shape[0], 1))
    loss = -sequence_mean(mf, lengths, n_seqs)(gate * adv)
    n_tok = lengths.sum()
    with torch.no_grad():
        m = common_metrics(loss, loss, mf, n_tok, entropy, None)
        m.update(ratio_stats(r, mf, n_tok))
        p = torch.sigmoid(tau * (r - 1.0)).expand_as(mf)
        m["gate_mean"] = (4.0 * p * (1.0 - p) * r * mf).sum() / n_tok.clamp(min=1)
    return finish(loss, m)
