"""CISPO (MiniMax-M1, arXiv:2506.13585): clip the importance weight, not the update.

``L = -sum_{i,t} sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_i log pi(o_t) / num_tokens``: every
token keeps a gradient (a PPO clip drops the gradient of clipped tokens, which in long reasoning
are often the rare "fork" tokens); the truncated, stop-gradient weight only bounds its size.
Defaults: no effective lower bound (``eps_low = 1``: the weight is never raised) and an upper
cap of ``r <= 5`` (``eps_high = 4``), ScaleRL's setting.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stages.train.losses.shared import (
    Metrics,
    clip,
    common_metrics,
    finish,
    prepare,
    ratio_stats,
    token_log_ratio,
    token_sum,
)


def cispo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 1.0,
    eps_high: float = 4.0,
    entropy: Tensor | None = None,
    num_tokens: float | None = None,
) -> tuple[Tensor, Metrics]:
    """CISPO: ``-sum_{i,t} sg(clip(r_t)) A_i lp_t / num_tokens`` (default: valid tokens of this
    call). The value is a surrogate (it contains ``lp`` itself); its gradient is the point.

    ``clip_frac_high`` / ``clip_frac_low``: valid tokens whose weight was capped at
    ``1 + eps_high`` / raised to ``1 - eps_low``, whatever the advantage's sign (CISPO truncates
    the weight, it does not drop the token)."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    r = token_log_ratio(lp, old, mf).exp()
    weight = clip(r, eps_low, eps_high).detach()
    n_tok = lengths.sum()
    denom = n_tok.clamp(min=1) if num_tokens is None else float(num_tokens)
    loss = -token_sum(weight * adv * lp, mf) / denom
    with torch.no_grad():
        m = common_metrics(loss, loss, mf, n_tok, entropy, None)
        m.update(ratio_stats(r, mf, n_tok))
        m["clip_frac_high"] = ((r > 1.0 + eps_high) * mf).sum() / n_tok.clamp(min=1)
        m["clip_frac_low"] = ((r < 1.0 - eps_low) * mf).sum() / n_tok.clamp(min=1)
    return finish(loss, m)
