"""What every policy loss is built from: input checks, importance ratios, the clipped
surrogate, explicit aggregations, and the metrics each loss reports.

Conventions (see :mod:`stages.train.algos` for the loss signature): ``lp``/``old`` are ``[N, L]``
log-probs, ``mf`` the float mask of valid tokens, ``lengths`` its row sums. Everything is computed
in float32 (float64 stays float64). Log-ratios are clamped to ``±LOG_RATIO_CAP`` before ``exp``
(as verl does), so a diverged batch gives huge but finite ratios instead of inf/NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Metrics = dict[str, float]

LOG_RATIO_CAP = 20.0
"""Log-ratios (token, sequence and KL) are clamped to this magnitude: e^20 ≈ 4.9e8."""


def compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def prepare(
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
    dtype = compute_dtype(logp)
    lp = logp.to(dtype)
    old = old_logp.detach().to(dtype)
    mf = mask.detach().to(dtype)
    adv = advantages.detach().to(dtype)
    adv = adv[:, None] if adv.dim() == 1 else adv * mf
    lengths = mf.sum(1)
    return lp, old, adv, mf, lengths


def token_log_ratio(lp: Tensor, old: Tensor, mf: Tensor) -> Tensor:
    """``lp - old`` clamped, zero on padding (multiplying by the mask keeps it cheap and exact)."""
    return (lp - old).clamp(-LOG_RATIO_CAP, LOG_RATIO_CAP) * mf


def seq_log_ratio(log_ratio: Tensor, lengths: Tensor) -> Tensor:
    """Masked mean of the token log-ratios per response; 0 for a response with no valid token."""
    return log_ratio.sum(1) / lengths.clamp(min=1)


def clip(x: Tensor, eps_low: float, eps_high: float) -> Tensor:
    return x.clamp(1.0 - eps_low, 1.0 + eps_high)


def seq_token_mean(obj: Tensor, mf: Tensor, lengths: Tensor) -> Tensor:
    """``(1/|o_i|) sum_t obj_t`` per response; ``obj`` is ``[N, L]`` or ``[N, 1]`` (constant in t).

    A response with no valid token contributes 0 (it still counts in N, as in the formula)."""
    if obj.shape[1] == 1:
        return obj[:, 0] * (lengths > 0).to(obj.dtype)
    return (obj * mf).sum(1) / lengths.clamp(min=1)


def token_sum(obj: Tensor, mf: Tensor) -> Tensor:
    """``sum_{i,t} obj_{i,t}`` over valid tokens; ``obj`` is ``[N, L]`` or ``[N, 1]``."""
    if obj.shape[1] == 1:
        return (obj[:, 0] * mf.sum(1)).sum()
    return (obj * mf).sum()


def k3_kl(lp: Tensor, ref_logp: Tensor, mf: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref) per token: ``exp(ref - lp) - (ref - lp) - 1`` (>= 0)."""
    d = (ref_logp.detach().to(lp.dtype) - lp).clamp(-LOG_RATIO_CAP, LOG_RATIO_CAP) * mf
    return d.exp() - d - 1.0


def masked_extrema(x: Tensor, mf: Tensor) -> tuple[Tensor, Tensor]:
    """Max and min of ``x`` ([N, L] or [N, 1]) over valid tokens; (0, 0) when none is valid.

    Arithmetic masking (``x * m -/+ (1 - m) * big``), not ``torch.where``: on CPU, ``where`` and
    ``masked_fill`` with a mask are ~30x slower than a multiply (torch 2.13)."""
    big = torch.finfo(x.dtype).max
    if x.shape[1] == 1:
        mf = (mf.sum(1, keepdim=True) > 0).to(x.dtype)
    hi = (x * mf).add_((mf - 1.0).mul_(big)).amax()
    lo = (x * mf).sub_((mf - 1.0).mul_(big)).amin()
    any_valid = mf.amax().clamp(max=1.0)
    return hi * any_valid, lo * any_valid


def ratio_metrics(
    ratio: Tensor, unclipped: Tensor, clipped: Tensor, adv: Tensor, mf: Tensor, n_tok: Tensor
) -> dict[str, Tensor]:
    """Importance-weight statistics and clip fractions over valid tokens.

    A token is clipped when the clipped branch of ``min(r*A, clip(r)*A)`` is strictly smaller,
    i.e. the clip zeroes its gradient; ``high`` when A > 0 (ratio above 1+eps_high), ``low``
    when A < 0 (ratio below 1-eps_low). ``ratio`` is the weight the loss actually uses."""
    hit = (unclipped - clipped).sign_().clamp_(min=0.0) * mf  # 1.0 where clipped < unclipped
    return {**clip_fractions(hit, adv, n_tok), **ratio_stats(ratio, mf, n_tok)}


def clip_fractions(
    hit: Tensor, adv: Tensor, n_tok: Tensor, dual: Tensor | None = None
) -> dict[str, Tensor]:
    """Fractions of valid tokens where the clip zeroed the gradient (``hit``: 1.0 where the
    clipped branch was strictly smaller, 0 elsewhere and on padding), split by the advantage's
    sign; with dual-clip, ``clip_frac_dual`` where the ``c * A`` bound (``dual``, same form) was
    active instead."""
    pos, neg = (adv > 0).to(hit.dtype), (adv < 0).to(hit.dtype)
    if adv.shape[1] == 1:  # one advantage per response: weight the row sums
        rows = hit.sum(1)
        high, low = torch.dot(rows, pos[:, 0]), torch.dot(rows, neg[:, 0])
    else:
        high, low = (hit * pos).sum(), (hit * neg).sum()
    denom = n_tok.clamp(min=1)
    out = {"clip_frac_high": high / denom, "clip_frac_low": low / denom}
    if dual is not None:
        out["clip_frac_dual"] = dual.sum() / denom
    return out


def ratio_stats(ratio: Tensor, mf: Tensor, n_tok: Tensor) -> dict[str, Tensor]:
    """Mean, max, min and spread (max - min) of a ratio (``[N, L]`` or ``[N, 1]``) over valid
    tokens: the importance-weight spread of the MGPO paper's Figure 5."""
    hi, lo = masked_extrema(ratio, mf)
    total = (
        (ratio[:, 0] * mf.sum(1)).sum()
        if ratio.shape[1] == 1
        else torch.vdot(ratio.reshape(-1), mf.reshape(-1))
    )
    return {
        "ratio_mean": total / n_tok.clamp(min=1),
        "ratio_max": hi,
        "ratio_min": lo,
        "ratio_spread": hi - lo,
    }


def finish(loss: Tensor, values: dict[str, Tensor | float]) -> tuple[Tensor, Metrics]:
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


def common_metrics(
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


def kl_term(
    lp: Tensor, ref_logp: Tensor | None, kl_coef: float, mf: Tensor
) -> tuple[Tensor | None, bool]:
    """Per-token k3 KL when a reference is given; whether it enters the loss."""
    if ref_logp is None:
        return None, False
    if ref_logp.shape != lp.shape:
        raise ValueError(f"ref_logp must be {tuple(lp.shape)}, got {tuple(ref_logp.shape)}")
    return k3_kl(lp, ref_logp, mf), kl_coef != 0.0


def clipped_objective(
    ratio: Tensor,
    clipped_ratio: Tensor,
    adv: Tensor,
    lp: Tensor,
    ref_logp: Tensor | None,
    kl_coef: float,
    mf: Tensor,
    aggregate: Callable[[Tensor], Tensor],
    clip_ratio_c: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The clipped surrogate every clipped algorithm shares, aggregated by ``aggregate`` (each
    algorithm passes its own, explicitly): returns loss, pg_loss, unclipped, clipped, k3 KL.

    ``clip_ratio_c`` (dual-clip PPO, Ye et al. 2020): where A < 0 the per-token objective is
    also bounded below by ``c * A`` (the loss by ``-c * A``), so a huge ratio on a bad token
    cannot dominate the update; that token then has no gradient."""
    unclipped = ratio * adv
    clipped = clipped_ratio * adv
    objective = torch.minimum(unclipped, clipped)
    if clip_ratio_c is not None:
        objective = torch.maximum(objective, dual_bound(adv, clip_ratio_c))
    pg_loss = -aggregate(objective)
    kl_tok, use_kl = kl_term(lp, ref_logp, kl_coef, mf)
    loss = pg_loss + kl_coef * aggregate(kl_tok) if use_kl else pg_loss
    return loss, pg_loss, unclipped, clipped, kl_tok


def dual_bound(adv: Tensor, clip_ratio_c: float) -> Tensor:
    """The dual-clip floor of the objective: ``c * A`` where A < 0, ``-finfo.max`` (no bound)
    elsewhere; built with arithmetic, not ``where`` (see :func:`masked_extrema`)."""
    negative = (adv < 0).to(adv.dtype)
    return (
        (adv * clip_ratio_c).mul_(negative).add_((negative - 1.0).mul_(torch.finfo(adv.dtype).max))
    )


def sequence_mean(mf: Tensor, lengths: Tensor, n_seqs: float) -> Callable[[Tensor], Tensor]:
    """GRPO-style aggregation: token mean per response, summed, divided by ``n_seqs``."""

    def aggregate(x: Tensor) -> Tensor:
        return seq_token_mean(x, mf, lengths).sum() / n_seqs

    return aggregate


def clipped_metrics(
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
    clip_ratio_c: float | None = None,
) -> dict[str, Tensor | float]:
    """Common metrics, ratio statistics, clip fractions and (with dual-clip) ``clip_frac_dual``:
    the fraction of valid tokens whose loss the ``-c * A`` bound replaced."""
    with torch.no_grad():
        m = common_metrics(loss, pg_loss, mf, n_tok, entropy, kl_tok)
        m.update(ratio_metrics(ratio, unclipped, clipped, adv, mf, n_tok))
        if clip_ratio_c is not None:
            dual = torch.minimum(unclipped, clipped) < dual_bound(adv, clip_ratio_c)
            m["clip_frac_dual"] = (dual.to(mf.dtype) * mf).sum() / n_tok.clamp(min=1)
    return m


def clipped_loss(
    ratio: Tensor,
    clipped_ratio: Tensor,
    adv: Tensor,
    lp: Tensor,
    mf: Tensor,
    lengths: Tensor,
    aggregate: Callable[[Tensor], Tensor],
    *,
    ref_logp: Tensor | None,
    kl_coef: float,
    entropy: Tensor | None,
    clip_ratio_c: float | None = None,
) -> tuple[Tensor, dict[str, Tensor | float]]:
    """``-aggregate(min(r A, clip(r) A))`` (+ ``kl_coef * aggregate(k3 KL)``) and its metrics
    (not yet detached: a loss may add its own before :func:`finish`)."""
    loss, pg_loss, unclipped, clipped, kl_tok = clipped_objective(
        ratio, clipped_ratio, adv, lp, ref_logp, kl_coef, mf, aggregate, clip_ratio_c
    )
    metrics = clipped_metrics(
        loss,
        pg_loss,
        ratio,
        unclipped,
        clipped,
        adv,
        mf,
        lengths.sum(),
        entropy,
        kl_tok,
        clip_ratio_c,
    )
    return loss, metrics


def count_or_default(value: float | None, default: float) -> float:
    """A global normaliser passed by the trainer, or this call's own count."""
    return float(default) if value is None else float(value)
