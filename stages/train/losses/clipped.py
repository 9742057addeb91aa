"""The clipped-ratio losses: GRPO, GSPO, DAPO and Dr.GRPO (DESIGN.md §4).

Each states its ratio (token ``w_t`` or sequence ``s_i``), its clip range and its aggregation;
the clipped surrogate itself (with the optional dual-clip bound ``clip_ratio_c``) is
:func:`~stages.train.losses.shared.clipped_objective`.
"""

from __future__ import annotations

from torch import Tensor

from stages.train.losses.shared import (
    Metrics,
    clip,
    clipped_loss,
    count_or_default,
    finish,
    prepare,
    seq_log_ratio,
    sequence_mean,
    token_log_ratio,
    token_sum,
)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GRPO: ``-(1/N) sum_i (1/|o_i|) sum_t min(w_t A, clip(w_t) A)`` (+ kl_coef * k3 KL, same
    aggregation). ``num_seqs`` replaces N (default: rows of this call)."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    w = token_log_ratio(lp, old, mf).exp()
    seq_mean = sequence_mean(mf, lengths, count_or_default(num_seqs, max(lp.shape[0], 1)))
    return finish(
        *clipped_loss(
            w,
            clip(w, eps_low, eps_high),
            adv,
            lp,
            mf,
            lengths,
            seq_mean,
            ref_logp=ref_logp,
            kl_coef=kl_coef,
            entropy=entropy,
            clip_ratio_c=clip_ratio_c,
        )
    )


def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    clip_ratio_c: float | None = None,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GSPO: GRPO with the sequence ratio ``s_i = exp(mean_t(lp - old))`` for every token (the
    gradient flows through the mean). Default clip 3e-4 / 4e-4 as in the GSPO paper."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    s = seq_log_ratio(token_log_ratio(lp, old, mf), lengths).exp()[:, None]  # [N, 1]
    seq_mean = sequence_mean(mf, lengths, count_or_default(num_seqs, max(lp.shape[0], 1)))
    return finish(
        *clipped_loss(
            s,
            clip(s, eps_low, eps_high),
            adv,
            lp,
            mf,
            lengths,
            seq_mean,
            ref_logp=ref_logp,
            kl_coef=kl_coef,
            entropy=entropy,
            clip_ratio_c=clip_ratio_c,
        )
    )


def dapo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    clip_ratio_c: float | None = None,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_tokens: float | None = None,
) -> tuple[Tensor, Metrics]:
    """DAPO: GRPO's clipped surrogate with clip-higher (eps_high 0.28) and a token mean over the
    whole batch: ``-sum_{i,t} min(...) / num_tokens`` (default: valid tokens of this call).
    Dynamic sampling is the trainer's job (see ``advantages.degenerate_groups``)."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    denom = lengths.sum().clamp(min=1) if num_tokens is None else float(num_tokens)
    w = token_log_ratio(lp, old, mf).exp()

    def token_mean(x: Tensor) -> Tensor:
        return token_sum(x, mf) / denom

    return finish(
        *clipped_loss(
            w,
            clip(w, eps_low, eps_high),
            adv,
            lp,
            mf,
            lengths,
            token_mean,
            ref_logp=ref_logp,
            kl_coef=kl_coef,
            entropy=entropy,
            clip_ratio_c=clip_ratio_c,
        )
    )


def dr_grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
    kl_coef: float = 0.0,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> tuple[Tensor, Metrics]:
    """Dr.GRPO: the clipped token sum divided by a constant ``num_seqs x max_len`` (defaults: N
    and L of this call) so no length bias enters; advantages are mean-only (no std division)."""
    lp, old, adv, mf, lengths = prepare(logp, old_logp, advantages, mask)
    n_seqs = count_or_default(num_seqs, max(lp.shape[0], 1))
    denom = max(n_seqs * count_or_default(max_len, lp.shape[1]), 1.0)
    w = token_log_ratio(lp, old, mf).exp()

    def constant_mean(x: Tensor) -> Tensor:
        return token_sum(x, mf) / denom

    return finish(
        *clipped_loss(
            w,
            clip(w, eps_low, eps_high),
            adv,
            lp,
            mf,
            lengths,
            constant_mean,
            ref_logp=ref_logp,
            kl_coef=kl_coef,
            entropy=entropy,
            clip_ratio_c=clip_ratio_c,
        )
    )
