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
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mgpo_cli.errors import MgpoError

Metrics = dict[str, float]
LossFn = Callable[..., tuple[Tensor, Metrics]]

LOG_RATIO_CAP = 20.0
"""Log-ratios (token, sequence and KL) are clamped to this magnitude: e^20 ≈ 4.9e8."""

_FLOOR_TOL = 1e-9
"""``floor(beta * n)`` is taken as ``floor(beta * n + 1e-9)`` so that e.g. 0.29 * 100 selects 29
tokens, not 28 (binary rounding), matching what a user reading the formula expects."""


# ----------------------------------------------------------------------------- shared pieces


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _prepare(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes, upcast, and return (lp, old, adv [N,1|L], float mask, lengths)."""
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, L], got shape {tuple(logp.shape)}")
    if old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must have the same [N, L] shape"
        )
    n = logp.shape[0]
    if advantages.shape not in ((n,), tuple(logp.shape)):
        raise ValueError(
            f"advantages must be [N] or [N, L] = {tuple(logp.shape)}, got {tuple(advantages.shape)}"
        )
    dtype = _compute_dtype(logp)
    lp = logp.to(dtype)
    old = old_logp.detach().to(dtype)
    mf = mask.detach().to(dtype)
    adv = advantages.detach().to(dtype)
    adv = adv[:, None] if adv.dim() == 1 else adv * mf
    lengths = mf.sum(1)
    return lp, old, adv, mf, lengths


def _token_log_ratio(lp: Tensor, old: Tensor, mf: Tensor) -> Tensor:
    """``lp - old`` clamped, zero on padding (multiplying by the mask keeps it cheap and exact)."""
    return (lp - old).clamp(-LOG_RATIO_CAP, LOG_RATIO_CAP) * mf


def _seq_log_ratio(log_ratio: Tensor, lengths: Tensor) -> Tensor:
    """Masked mean of the token log-ratios per response; 0 for a response with no valid token."""
    return log_ratio.sum(1) / lengths.clamp(min=1)


def _clip(x: Tensor, eps_low: float, eps_high: float) -> Tensor:
    return x.clamp(1.0 - eps_low, 1.0 + eps_high)


def _seq_token_mean(obj: Tensor, mf: Tensor, lengths: Tensor) -> Tensor:
    """``(1/|o_i|) sum_t obj_t`` per response; ``obj`` is ``[N, L]`` or ``[N, 1]`` (constant in t).

    A response with no valid token contributes 0 (it still counts in N, as in the formula)."""
    if obj.shape[1] == 1:
        return obj[:, 0] * (lengths > 0).to(obj.dtype)
    return (obj * mf).sum(1) / lengths.clamp(min=1)


def _token_sum(obj: Tensor, mf: Tensor) -> Tensor:
    """``sum_{i,t} obj_{i,t}`` over valid tokens; ``obj`` is ``[N, L]`` or ``[N, 1]``."""
    if obj.shape[1] == 1:
        return (obj[:, 0] * mf.sum(1)).sum()
    return (obj * mf).sum()


def _k3_kl(lp: Tensor, ref_logp: Tensor, mf: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref) per token: ``exp(ref - lp) - (ref - lp) - 1`` (>= 0)."""
    d = (ref_logp.detach().to(lp.dtype) - lp).clamp(-LOG_RATIO_CAP, LOG_RATIO_CAP) * mf
    return d.exp() - d - 1.0


def _masked_extrema(x: Tensor, mf: Tensor) -> tuple[Tensor, Tensor]:
    """Max and min of ``x`` ([N, L] or [N, 1]) over valid tokens; (0, 0) when none is valid."""
    big = torch.finfo(x.dtype).max
    if x.shape[1] == 1:
        mf = (mf.sum(1, keepdim=True) > 0).to(x.dtype)
    hi = (x * mf + (mf - 1.0) * big).amax()
    lo = (x * mf - (mf - 1.0) * big).amin()
    any_valid = mf.amax().clamp(max=1.0)
    return hi * any_valid, lo * any_valid


def _ratio_metrics(
    ratio: Tensor, unclipped: Tensor, clipped: Tensor, adv: Tensor, mf: Tensor, n_tok: Tensor
) -> dict[str, Tensor]:
    """Importance-weight statistics and clip fractions over valid tokens.

    A token is clipped when the clipped branch of ``min(r*A, clip(r)*A)`` is strictly smaller,
    i.e. the clip zeroes its gradient; ``high`` when A > 0 (ratio above 1+eps_high), ``low``
    when A < 0 (ratio below 1-eps_low). ``ratio`` is the weight the loss actually uses."""
    hit = (clipped < unclipped).to(mf.dtype) * mf
    pos = (adv > 0).to(mf.dtype)
    neg = (adv < 0).to(mf.dtype)
    r_full = ratio.expand_as(mf)
    hi, lo = _masked_extrema(ratio, mf)
    denom = n_tok.clamp(min=1)
    return {
        "clip_frac_high": (hit * pos).sum() / denom,
        "clip_frac_low": (hit * neg).sum() / denom,
        "ratio_mean": (r_full * mf).sum() / denom,
        "ratio_max": hi,
        "ratio_min": lo,
        "ratio_spread": hi - lo,
    }


def _finish(loss: Tensor, values: dict[str, Tensor | float]) -> tuple[Tensor, Metrics]:
    """Detach all metrics to python floats with a single device sync."""
    keys = list(values)
    with torch.no_grad():
        parts = [
            v.detach().reshape(()).to(torch.float64)
            if isinstance(v, Tensor)
            else torch.tensor(float(v), dtype=torch.float64, device=loss.device)
            for v in values.values()
        ]
        floats = torch.stack([p.to(loss.device) for p in parts]).tolist()
    return loss, dict(zip(keys, floats, strict=True))


def _common_metrics(
    loss: Tensor,
    pg_loss: Tensor,
    mf: Tensor,
    n_tok: Tensor,
    entropy: Tensor | None,
    kl_tok: Tensor | None,
) -> dict[str, Tensor | float]:
    out: dict[str, Tensor | float] = {"loss": loss.detach(), "pg_loss": pg_loss.detach()}
    out["tokens"] = n_tok
    if kl_tok is not None:
        out["kl"] = (kl_tok.detach() * mf).sum() / n_tok.clamp(min=1)
    if entropy is not None:
        ent = entropy.detach().to(mf.dtype)
        out["entropy"] = (ent * mf).sum() / n_tok.clamp(min=1)
    return out


def _kl_term(
    lp: Tensor, ref_logp: Tensor | None, kl_coef: float, mf: Tensor
) -> tuple[Tensor | None, bool]:
    """Per-token k3 KL when a reference is given; whether it enters the loss."""
    if ref_logp is None:
        return None, False
    if ref_logp.shape != lp.shape:
        raise ValueError(f"ref_logp must be {tuple(lp.shape)}, got {tuple(ref_logp.shape)}")
    return _k3_kl(lp, ref_logp, mf), kl_coef != 0.0


def _clipped_objective(
    ratio: Tensor,
    clipped_ratio: Tensor,
    adv: Tensor,
    lp: Tensor,
    ref_logp: Tensor | None,
    kl_coef: float,
    mf: Tensor,
    aggregate: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The clipped surrogate every clipped algorithm shares, aggregated by ``aggregate`` (each
    algorithm passes its own, explicitly): returns loss, pg_loss, unclipped, clipped, k3 KL."""
    unclipped = ratio * adv
    clipped = clipped_ratio * adv
    pg_loss = -aggregate(torch.minimum(unclipped, clipped))
    kl_tok, use_kl = _kl_term(lp, ref_logp, kl_coef, mf)
    loss = pg_loss + kl_coef * aggregate(kl_tok) if use_kl else pg_loss
    return loss, pg_loss, unclipped, clipped, kl_tok


def _sequence_mean(mf: Tensor, lengths: Tensor, n_seqs: float) -> Callable[[Tensor], Tensor]:
    """GRPO-style aggregation: token mean per response, summed, divided by ``n_seqs``."""

    def aggregate(x: Tensor) -> Tensor:
        return _seq_token_mean(x, mf, lengths).sum() / n_seqs

    return aggregate


def _clipped_metrics(
    loss: Tensor,
    pg_loss: Tensor,
    ratio: Tensor,
    unclipped: Tensor,
    clipped: Tensor,
    adv: Tensor,
    mf: Tensor,
    n_tok: Tensor,
    entropy: Tensor | None,
    kl_tok: Tensor | None,
) -> dict[str, Tensor | float]:
    with torch.no_grad():
        m = _common_metrics(loss, pg_loss, mf, n_tok, entropy, kl_tok)
        m.update(_ratio_metrics(ratio, unclipped, clipped, adv, mf, n_tok))
    return m


# ----------------------------------------------------------------------------- MGPO ranking


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
    dtype = _compute_dtype(logp)
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


# ----------------------------------------------------------------------------- losses


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GRPO: ``-(1/N) sum_i (1/|o_i|) sum_t min(w_t A, clip(w_t) A)`` (+ kl_coef * k3 KL, same
    aggregation). ``num_seqs`` replaces N (default: rows of this call)."""
    lp, old, adv, mf, lengths = _prepare(logp, old_logp, advantages, mask)
    n_seqs = float(max(lp.shape[0], 1)) if num_seqs is None else float(num_seqs)
    w = _token_log_ratio(lp, old, mf).exp()

    seq_mean = _sequence_mean(mf, lengths, n_seqs)

    loss, pg_loss, unclipped, clipped, kl_tok = _clipped_objective(
        w, _clip(w, eps_low, eps_high), adv, lp, ref_logp, kl_coef, mf, seq_mean
    )
    m = _clipped_metrics(
        loss, pg_loss, w, unclipped, clipped, adv, mf, lengths.sum(), entropy, kl_tok
    )
    return _finish(loss, m)


def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GSPO: GRPO with the sequence ratio ``s_i = exp(mean_t(lp - old))`` for every token (the
    gradient flows through the mean). Default clip 3e-4 / 4e-4 as in the GSPO paper."""
    lp, old, adv, mf, lengths = _prepare(logp, old_logp, advantages, mask)
    n_seqs = float(max(lp.shape[0], 1)) if num_seqs is None else float(num_seqs)
    s = _seq_log_ratio(_token_log_ratio(lp, old, mf), lengths).exp()[:, None]  # [N, 1]

    seq_mean = _sequence_mean(mf, lengths, n_seqs)

    loss, pg_loss, unclipped, clipped, kl_tok = _clipped_objective(
        s, _clip(s, eps_low, eps_high), adv, lp, ref_logp, kl_coef, mf, seq_mean
    )
    m = _clipped_metrics(
        loss, pg_loss, s, unclipped, clipped, adv, mf, lengths.sum(), entropy, kl_tok
    )
    return _finish(loss, m)


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
    _check_alpha_beta(alpha, beta)
    lp, old, adv, mf, lengths = _prepare(logp, old_logp, advantages, mask)
    n_seqs = float(max(lp.shape[0], 1)) if num_seqs is None else float(num_seqs)
    log_ratio = _token_log_ratio(lp, old, mf)
    w = log_ratio.exp()
    s = _seq_log_ratio(log_ratio, lengths).exp()[:, None]
    a = blend_weights(lp, mf, alpha, beta)
    ratio = s + a * (w - s)
    mclip = _clip(s, eps_low, eps_high)
    mclip = mclip + a * (_clip(w, eps_low, eps_high) - mclip)

    seq_mean = _sequence_mean(mf, lengths, n_seqs)

    loss, pg_loss, unclipped, clipped, kl_tok = _clipped_objective(
        ratio, mclip, adv, lp, ref_logp, kl_coef, mf, seq_mean
    )
    n_tok = lengths.sum()
    m = _clipped_metrics(loss, pg_loss, ratio, unclipped, clipped, adv, mf, n_tok, entropy, kl_tok)
    with torch.no_grad():
        m["blend_frac"] = (a > 0).to(mf.dtype).sum() / n_tok.clamp(min=1)
        m["alpha_mean"] = a.sum() / n_tok.clamp(min=1)
    return _finish(loss, m)


def dapo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_tokens: float | None = None,
) -> tuple[Tensor, Metrics]:
    """DAPO: GRPO's clipped surrogate with clip-higher (eps_high 0.28) and a token mean over the
    whole batch: ``-sum_{i,t} min(...) / num_tokens`` (default: valid tokens of this call).
    Dynamic sampling is the trainer's job (see ``advantages.degenerate_groups``)."""
    lp, old, adv, mf, lengths = _prepare(logp, old_logp, advantages, mask)
    n_tok = lengths.sum()
    denom = n_tok.clamp(min=1) if num_tokens is None else float(num_tokens)
    w = _token_log_ratio(lp, old, mf).exp()

    def token_mean(x: Tensor) -> Tensor:
        return _token_sum(x, mf) / denom

    loss, pg_loss, unclipped, clipped, kl_tok = _clipped_objective(
        w, _clip(w, eps_low, eps_high), adv, lp, ref_logp, kl_coef, mf, token_mean
    )
    m = _clipped_metrics(loss, pg_loss, w, unclipped, clipped, adv, mf, n_tok, entropy, kl_tok)
    return _finish(loss, m)


def dr_grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> tuple[Tensor, Metrics]:
    """Dr.GRPO: the clipped token sum divided by a constant ``num_seqs x max_len`` (defaults: N
    and L of this call) so no length bias enters; advantages are mean-only (no std division)."""
    lp, old, adv, mf, lengths = _prepare(logp, old_logp, advantages, mask)
    n_seqs = float(max(lp.shape[0], 1)) if num_seqs is None else float(num_seqs)
    length = float(lp.shape[1]) if max_len is None else float(max_len)
    denom = max(n_seqs * length, 1.0)
    w = _token_log_ratio(lp, old, mf).exp()

    def constant_mean(x: Tensor) -> Tensor:
        return _token_sum(x, mf) / denom

    loss, pg_loss, unclipped, clipped, kl_tok = _clipped_objective(
        w, _clip(w, eps_low, eps_high), adv, lp, ref_logp, kl_coef, mf, constant_mean
    )
    m = _clipped_metrics(
        loss, pg_loss, w, unclipped, clipped, adv, mf, lengths.sum(), entropy, kl_tok
    )
    return _finish(loss, m)


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
    lp, old, adv, mf, lengths = _prepare(logp, old_logp, advantages, mask)
    n_tok = lengths.sum()
    denom = n_tok.clamp(min=1) if num_tokens is None else float(num_tokens)
    loss = -float(alpha_age) * _token_sum(lp * adv, mf) / denom
    with torch.no_grad():
        m = _common_metrics(loss, loss, mf, n_tok, entropy, None)
        w = _token_log_ratio(lp, old, mf).exp()
        hi, lo = _masked_extrema(w, mf)
        m.update(
            ratio_mean=(w * mf).sum() / n_tok.clamp(min=1),
            ratio_max=hi,
            ratio_min=lo,
            ratio_spread=hi - lo,
        )
    return _finish(loss, m)


# ----------------------------------------------------------------------------- registry + API

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


def _check_alpha_beta(alpha: object, beta: object) -> None:
    if alpha != "dyn" and not (_is_real(alpha) and 0.0 <= float(alpha) <= 1.0):
        raise MgpoError(f"option alpha must be a number in [0, 1] or 'dyn', got {alpha!r}")
    if not (_is_real(beta) and 0.0 <= float(beta) <= 1.0):
        raise MgpoError(f"option beta must be a number in [0, 1], got {beta!r}")


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
    if not _is_real(value):
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
        _check_alpha_beta(clean.get("alpha", 0.5), clean.get("beta", 0.5))
    if clean.get("kl_coef", 0.0) and clean.get("ref_logp") is None:
        raise MgpoError(f"{name}: kl_coef > 0 needs reference log-probs (ref_logp)")
    return fn(logp, old_logp, advantages, mask, **clean)
