"""GPG (Group Policy Gradient): the plain policy gradient with a group baseline, no ratio, no clip."""

from __future__ import annotations

import torch
from torch import Tensor

from stages.train.losses.shared import (
    Metrics,
    common_metrics,
    finish,
    masked_extrema,
    prepare,
    token_log_ratio,
    token_sum,
)


def gpg_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    alpha_age: float = 1.0,
    entropy: Tensor | None = None,
    num_tokens: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GPG: ``-alpha_age * sum_{i,t} lp_t A_i / num_tokens`` (default: valid tokens of this
    call). No ratio, no clip, no KL. ``alpha_age = B/(B-M)`` comes from
    ``advantages.gpg_correction``. ``old_logp`` only feeds the ratio metrics (off-policy drift)."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    n_tok = lengths.sum()
    denom = n_tok.clamp(min=1) if num_tokens is None else float(num_tokens)
    loss = -float(alpha_age) * token_sum(lp * adv, mf) / denom
    with torch.no_grad():
        m = common_metrics(loss, loss, mf, n_tok, entropy, None)
        w = token_log_ratio(lp, old, mf).exp()
        hi, lo = masked_extrema(w, mf)
        m.update(
            ratio_mean=(w * mf).sum() / n_tok.clamp(min=1),
            ratio_max=hi,
            ratio_min=lo,
            ratio_spread=hi - lo,
        )
    return finish(loss, m)
