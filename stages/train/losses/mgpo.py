"""MGPO (DESIGN.md §4): blend token- and sequence-level ratios on the most uncertain tokens.

1. rank each response's valid tokens by uncertainty ``u_t = -lp_t`` (descending, ties by position);
2. select the ``floor(beta * |o_i|)`` most uncertain;
3. blend weight ``a_t``: ``alpha`` on selected tokens (or ``1 - k_t / (beta |o_i|)`` for ``dyn``);
4. ``m_t = a_t w_t + (1 - a_t) s_i`` and ``mclip_t = a_t clip(w_t) + (1 - a_t) clip(s_i)``;
5. ``L = -(1/N) sum_i (1/|o_i|) sum_t min(m_t A_i, mclip_t A_i)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stages.errors import MgpoError
from stages.train.losses.shared import (
    Metrics,
    clip,
    clipped_loss,
    compute_dtype,
    count_or_default,
    finish,
    prepare,
    seq_log_ratio,
    sequence_mean,
    token_log_ratio,
)

_FLOOR_TOL = 1e-9
"""``floor(beta * n)`` is taken as ``floor(beta * n + 1e-9)`` so that e.g. 0.29 * 100 selects 29
tokens, not 28 (binary rounding), matching what a user reading the formula expects."""


def token_ranks(uncertainty: Tensor, mask: Tensor) -> Tensor:
    """Rank of each valid token within its response by uncertainty, descending: 0 = most uncertain.

    Ties go to the earlier position. Padding sorts after every valid token, so valid tokens get
    ranks 0..|o_i|-1; values at padding positions are meaningless. One sort plus one scatter, no
    Python loop. float64 uses a stable row-wise sort; everything else is ranked exactly in float32
    through a single 1-D integer sort (about 2x faster on CPU, see ``_packed_ranks``).
    """
    u = uncertainty.detach()
    if u.dtype == torch.float64:
        return _row_sort_ranks(u, mask)
    return _packed_ranks(u.to(torch.float32), mask)


def _row_sort_ranks(u: Tensor, mask: Tensor) -> Tensor:
    """Stable descending sort of each row, padding forced to the bottom with -finfo.max."""
    mf = mask.detach().to(u.dtype)
    key = u * mf + (mf - 1.0) * torch.finfo(u.dtype).max  # exact u on valid tokens
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    positions = torch.arange(u.shape[1], device=u.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _packed_ranks(u: Tensor, mask: Tensor) -> Tensor:
    """Ranks from one stable 1-D sort of int64 keys ``row * 2^32 + field``.

    Padding is first set to ``-finfo.max`` (below any valid value). ``field`` maps the float32
    bit pattern of that key to an integer whose order is the *reverse* of the float order (the
    sign-flip trick; ``+ 0.0`` folds -0 into +0 so they tie), so ascending keys give rows in
    order, most uncertain first, and the stable sort keeps position order on ties. Integer sorts
    are much faster than float sorts on CPU; ops are in place where possible because fresh large
    CPU allocations (page faults) cost as much as the arithmetic.
    """
    n, length = u.shape
    mf = mask.detach().to(torch.float32)
    key = (mf - 1.0).mul_(torch.finfo(torch.float32).max).addcmul_(u, mf).add_(0.0)
    bits = key.view(torch.int32)
    field = (bits >> 31).bitwise_and_(0x7FFFFFFF).bitwise_not_().bitwise_xor_(bits)
    offsets = torch.arange(n, device=u.device, dtype=torch.int64)[:, None].mul_(2**32).add_(2**31)
    keys = field.to(torch.int64).add_(offsets)
    order = torch.sort(keys.view(-1), stable=True).indices.view(n, length)
    order.sub_(torch.arange(0, n * length, length, device=u.device)[:, None])
    positions = torch.arange(length, device=u.device).expand(n, length)
    return torch.empty_like(order).scatter_(1, order, positions)


def selection_counts(lengths: Tensor, beta: float) -> Tensor:
    """``floor(beta * |o_i|)`` per response (with the tolerance described in ``_FLOOR_TOL``)."""
    return torch.floor(lengths.to(torch.float64) * beta + _FLOOR_TOL).to(torch.int64)


def blend_weights(logp: Tensor, mask: Tensor, alpha: float | str, beta: float) -> Tensor:
    """MGPO blend ratio ``a_t`` per token (DESIGN §4 steps 1-3), detached, 0 on padding.

    ``u_t = -logp_t``; the ``floor(beta*|o_i|)`` most uncertain valid tokens of each response are
    selected; fixed ``alpha`` gives ``a_t = alpha`` there, ``"dyn"`` gives ``1 - k_t/(beta*|o_i|)``
    (1 on the most uncertain token, decreasing with rank). Everything else gets 0.
    """
    dtype = compute_dtype(logp)
    mf = mask.detach().to(dtype)
    lengths = mf.sum(1)
    if beta == 0.0 or alpha == 0.0:
        return torch.zeros_like(mf)
    ranks = token_ranks(-logp.detach().to(dtype), mask)
    counts = selection_counts(lengths, beta)
    selected = (ranks < counts[:, None]).to(dtype).mul_(mf)
    if alpha == "dyn":
        scale = (lengths * beta).clamp(min=1.0)  # >= 1 wherever a token is selected
        return ranks.to(dtype).div_(scale[:, None]).neg_().add_(1.0).mul_(selected)
    return selected.mul_(float(alpha))


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
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, Metrics]:
    """MGPO (DESIGN §4): blend token and sequence ratios on the most uncertain tokens.

    ``m_t = a_t w_t + (1-a_t) s_i``, ``mclip_t = a_t clip(w_t) + (1-a_t) clip(s_i)`` with
    ``a_t`` from :func:`blend_weights`; loss ``-(1/N) sum_i (1/|o_i|) sum_t min(m_t A, mclip_t A)``.
    beta=0 or alpha=0 is GSPO (with these eps), alpha=1 & beta=1 is GRPO.
    """
    check_alpha_beta(alpha, beta)
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    log_ratio = token_log_ratio(lp, old, mf)
    w = log_ratio.exp()
    s = seq_log_ratio(log_ratio, lengths).exp()[:, None]
    a = blend_weights(lp, mf, alpha, beta)
    ratio = s + a * (w - s)
    mclip = clip(s, eps_low, eps_high)
    mclip = mclip + a * (clip(w, eps_low, eps_high) - mclip)

    seq_mean = sequence_mean(mf, lengths, count_or_default(num_seqs, max(lp.shape[0], 1)))
    loss, m = clipped_loss(
        ratio,
        mclip,
        adv,
        lp,
        mf,
        lengths,
        seq_mean,
        ref_logp=ref_logp,
        kl_coef=kl_coef,
        entropy=entropy,
    )
    n_tok = lengths.sum()
    with torch.no_grad():
        m["blend_frac"] = (a > 0).to(mf.dtype).sum() / n_tok.clamp(min=1)
        m["alpha_mean"] = a.sum() / n_tok.clamp(min=1)
    return finish(loss, m)


def check_alpha_beta(alpha: object, beta: object) -> None:
    if alpha != "dyn" and not (is_real(alpha) and 0.0 <= float(alpha) <= 1.0):
        raise MgpoError(f"option alpha must be a number in [0, 1] or 'dyn', got {alpha!r}")
    if not (is_real(beta) and 0.0 <= float(beta) <= 1.0):
        raise MgpoError(f"option beta must be a number in [0, 1], got {beta!r}")


def is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
