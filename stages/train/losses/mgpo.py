"""MGPO (DESIGN.md §4): blend token- and sequence-level ratios on the most uncertain tokens.

1. rank each response's valid tokens by uncertainty ``u_t`` (``-lp_t``, the paper's, or the token
   entropy), descending, ties by position;
2. select the ``floor(beta * |o_i|)`` most uncertain;
3. blend weight ``a_t``: ``alpha`` on selected tokens (or ``1 - k_t / (beta |o_i|)`` for ``dyn``);
4. ``m_t = a_t w_t + (1 - a_t) s_i`` and ``mclip_t = a_t clip(w_t) + (1 - a_t) clip(s_i)``;
5. ``L = -(1/N) sum_i (1/|o_i|) sum_t min(m_t A_i, mclip_t A_i)``.

``selection="paper"`` replaces steps 1-2 by a literal transcription of the paper's Algorithm 1
listing (see :func:`paper_selection`). The token selection lives in :mod:`.selection`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stages.errors import MgpoError
from stages.train.losses.selection import paper_selection, selection_counts, token_ranks, top_count
from stages.train.losses.shared import (
    LOG_RATIO_CAP,
    Metrics,
    clip,
    clip_fractions,
    common_metrics,
    compute_dtype,
    count_or_default,
    finish,
    kl_term,
    prepare,
    ratio_stats,
    sequence_mean,
)

UNCERTAINTIES = ("neg_logp", "entropy")
SELECTIONS = ("per_response", "paper")


def blend_weights(
    uncertainty: Tensor,
    mask: Tensor,
    alpha: float | str,
    beta: float,
    *,
    selection: str = "per_response",
    padded_width: float | None = None,
) -> Tensor:
    """MGPO blend ratio ``a_t`` per token (DESIGN §4 steps 1-3), detached, 0 on padding.

    ``per_response``: the ``floor(beta*|o_i|)`` most uncertain valid tokens of each response are
    selected; fixed ``alpha`` gives ``a_t = alpha`` there (found with one per-row threshold, no
    ranking), ``"dyn"`` gives ``1 - k_t/(beta*|o_i|)`` (1 on the most uncertain token, decreasing
    with rank). ``paper``: the tokens :func:`paper_selection` picks get ``alpha``.
    Everything else gets 0.
    """
    dtype = compute_dtype(uncertainty)
    u = uncertainty.detach().to(dtype)
    if beta == 0.0 or alpha == 0.0:
        return torch.zeros(u.shape, dtype=dtype, device=u.device)
    mf = mask.detach().to(dtype)
    if selection == "paper":
        return paper_selection(u, mf, beta, padded_width).mul_(float(alpha))
    lengths = mf.sum(1)
    counts = selection_counts(lengths, beta)
    if alpha != "dyn":
        return top_count(u, mask, counts).mul_(float(alpha))
    ranks = token_ranks(u, mask)
    selected = (ranks < counts[:, None]).to(dtype).mul_(mf)
    scale = (lengths * beta).clamp(min=1.0)  # >= 1 wherever a token is selected
    return ranks.to(dtype).div_(scale[:, None]).neg_().add_(1.0).mul_(selected)


def mgpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    alpha: float | str = 0.5,
    beta: float = 0.5,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
    uncertainty: str = "neg_logp",
    selection: str = "per_response",
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
    padded_width: float | None = None,
) -> tuple[Tensor, Metrics]:
    """MGPO (DESIGN §4): blend token and sequence ratios on the most uncertain tokens.

    ``m_t = a_t w_t + (1-a_t) s_i``, ``mclip_t = a_t clip(w_t) + (1-a_t) clip(s_i)`` with
    ``a_t`` from :func:`blend_weights`; loss ``-(1/N) sum_i (1/|o_i|) sum_t min(m_t A, mclip_t A)``.
    beta=0 or alpha=0 is GSPO (with these eps), alpha=1 & beta=1 is GRPO. ``uncertainty``:
    ``neg_logp`` ranks by ``-lp`` (the paper), ``entropy`` by the token entropy (needs
    ``entropy``). ``padded_width``: the row width ``L`` of ``selection="paper"`` (the trainer
    passes ``rollout.max_new_tokens``, the width the paper's framework pads to; default: this
    call's width). ``clip_ratio_c``: dual-clip, as in the clipped losses.

    Speed: the clipped objective is piecewise linear in ``(w_t, s_i)``, so its value and
    gradient are computed together in one no-grad pass (see :func:`_objective`); they equal
    those of autograd through ``min``.
    """
    check_alpha_beta(alpha, beta)
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    if uncertainty == "entropy":
        if entropy is None:
            raise ValueError("mgpo with uncertainty='entropy' needs the token entropies")
        u = entropy.detach().to(lp.dtype)
    else:
        u = lp.detach().neg()
    a = blend_weights(u, mf, alpha, beta, selection=selection, padded_width=padded_width)
    n_seqs = count_or_default(num_seqs, max(lp.shape[0], 1))
    row_weight = 1.0 / (lengths.clamp(min=1)[:, None] * n_seqs)  # per-response token mean, / N
    pg_loss, ratio, hit, dual = _objective(
        lp, old, mf, lengths, a, adv, row_weight, eps_low, eps_high, clip_ratio_c
    )
    kl_tok, use_kl = kl_term(lp, ref_logp, kl_coef, mf)
    loss = pg_loss + kl_coef * sequence_mean(mf, lengths, n_seqs)(kl_tok) if use_kl else pg_loss
    n_tok = lengths.sum()
    with torch.no_grad():
        m = common_metrics(loss, pg_loss, mf, n_tok, entropy, kl_tok)
        m.update(clip_fractions(hit, adv, n_tok, dual))
        m.update(ratio_stats(ratio, mf, n_tok))
        m["blend_frac"] = a.count_nonzero() / n_tok.clamp(min=1)  # a >= 0
        m["alpha_mean"] = a.sum() / n_tok.clamp(min=1)
    return finish(loss, m)


def _objective(
    lp: Tensor,
    old: Tensor,
    mf: Tensor,
    lengths: Tensor,
    a: Tensor,
    adv: Tensor,
    row_weight: Tensor,
    eps_low: float,
    eps_high: float,
    clip_ratio_c: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``-sum_t weight_t min(m_t A, mclip_t A)`` (dual-clipped if asked) with its exact gradient;
    ``weight_t`` is ``row_weight`` (``[N, 1]``) on valid tokens, 0 on padding.

    On each token one piece of the min is active, and it is linear in ``(w_t, s_i)``:
    unclipped ``A (a w + (1-a) s)``; clipped ``A (a clip(w) + (1-a) clip(s))``, whose slope in
    ``w`` (``s``) is ``A a`` (``A (1-a)``) where ``w`` (``s``) lies inside the clip range
    (inclusive, as ``clamp``'s gradient) and 0 outside; the dual-clip bound ``c A`` is flat.
    Ties go to the unclipped piece. With ``G_w``, ``G_s`` those slopes times ``weight``, and
    ``dw_t/dlp_t = w_t``, ``ds_i/dlp_t = s_i / |o_i|`` on valid tokens (0 where the log-ratio
    cap clamps), the gradient of the objective is
    ``g_t = G_w,t w_t + (s_i / |o_i|) sum_t' G_s,t'``. It is computed here without autograd, in
    place (on a CPU, fresh ``[N, L]`` buffers cost as much as the arithmetic, and a comparison's
    bool outputs several times more: masks here are 0/1 floats), and the loss is
    ``-(value + g . lp - (g . lp).detach())``: the exact value, and exactly ``-g`` as gradient,
    checked against autograd through the plain formula in the tests. Returns the loss and, for
    the metrics, ``m`` (detached), where the clipped piece was active, and where the dual-clip
    bound was (or None).
    """
    with torch.no_grad():
        raw = lp.detach() - old
        inside = None  # where the log-ratio cap does not clamp (the gradient passes)
        if raw.amax() > LOG_RATIO_CAP or raw.amin() < -LOG_RATIO_CAP:
            inside = raw.abs() <= LOG_RATIO_CAP
        log_ratio = raw.clamp_(-LOG_RATIO_CAP, LOG_RATIO_CAP).mul_(mf)
        per_token = 1.0 / lengths.clamp(min=1)[:, None]
        s = (log_ratio.sum(1, keepdim=True) * per_token).exp()  # [N, 1]
        w = log_ratio.exp_()
        cs = clip(s, eps_low, eps_high)
        ratio = (w - s).mul_(a).add_(s)  # m_t
        mclip = clip(w, eps_low, eps_high)
        out_w = (mclip - w).abs_().sign_()  # 1.0 where clip(w) != w (masks as floats: see below)
        mclip.sub_(cs).mul_(a).add_(cs)
        gap = (ratio - mclip).mul_(adv).mul_(mf).clamp_(min=0)  # m A - min(m A, mclip A)
        hit = gap.sign()  # 1.0 where the clipped piece is active
        aw = mf * (adv * row_weight)  # weight_t A
        value = (
            torch.vdot(aw.reshape(-1), ratio.reshape(-1)) - (gap.sum(1) * row_weight[:, 0]).sum()
        )
        keep_w = out_w.mul_(hit).neg_().add_(1.0)  # 0 where the clipped piece is flat in w
        keep_s = (hit * (cs != s).to(hit.dtype)).neg_().add_(1.0)  # ... and in s
        dual = None
        if clip_ratio_c is not None:
            objective = (adv * ratio).sub_(gap)  # min(m A, mclip A)
            dual = ((adv < 0) & (objective < clip_ratio_c * adv)).to(mf.dtype).mul_(mf)
            lift = (clip_ratio_c * adv - objective).mul_(dual)
            value = value + (lift.sum(1) * row_weight[:, 0]).sum()
            keep_w.sub_(dual).clamp_(min=0)
            keep_s.sub_(dual).clamp_(min=0)
        g_w = aw * a
        g_s = aw.sub_(g_w).mul_(keep_s).sum(1, keepdim=True)  # sum_t G_s,t
        grad = g_w.mul_(keep_w).mul_(w).addcmul_(mf, g_s * s * per_token)
        if inside is not None:
            grad.mul_(inside)
    linear = torch.vdot(grad.reshape(-1), lp.reshape(-1))
    return -(value + (linear - linear.detach())), ratio, hit, dual


def check_alpha_beta(alpha: object, beta: object) -> None:
    if alpha != "dyn" and not (is_real(alpha) and 0.0 <= float(alpha) <= 1.0):
        raise MgpoError(f"option alpha must be a number in [0, 1] or 'dyn', got {alpha!r}")
    if not (is_real(beta) and 0.0 <= float(beta) <= 1.0):
        raise MgpoError(f"option beta must be a number in [0, 1], got {beta!r}")


def is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
