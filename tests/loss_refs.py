"""Plain-loop float64 references for every policy loss and shared option, and random batches.

Written token by token with Python loops over 0-d tensors, independently of the vectorised code
in ``stages/train/losses``: the tests compare value and autograd gradient against these.
"""

from __future__ import annotations

import math

import pytest
import torch

from stages.train import algos

F64 = torch.float64


def ref_clip(x, eps_low, eps_high):
    return torch.clamp(x, 1.0 - eps_low, 1.0 + eps_high)


def ref_valid(mask, i):
    return [t for t in range(mask.shape[1]) if bool(mask[i, t])]


def ref_adv(adv, i, t):
    return adv[i] if adv.dim() == 1 else adv[i, t]


def ref_kl(lp, ref, i, t):
    d = ref[i, t] - lp[i, t]
    return torch.exp(d) - d - 1.0


def ref_ranks(lp, mask, i, uncertainty=None):
    """Most uncertain first (highest -logp, or highest ``uncertainty``), earlier position first
    on ties."""
    valid = ref_valid(mask, i)
    if uncertainty is None:
        order = sorted(valid, key=lambda t: (lp[i, t].item(), t))  # ascending logp
    else:
        order = sorted(valid, key=lambda t: (-uncertainty[i, t].item(), t))
    return {t: k for k, t in enumerate(order)}


def ref_paper_selection(u_rows, mask, beta, width):
    """Transcription of the MGPO paper's Algorithm 1 listing: k = int(beta * L) over the padded
    width L; per padded row (padding's uncertainty is 0), the k-th largest value; every token at
    or above it is selected, then only valid tokens count."""
    n, length = mask.shape
    k = int(beta * width)
    picked = set()
    if k == 0:
        return picked
    for i in range(n):
        row = [u_rows[i][t] if bool(mask[i, t]) else 0.0 for t in range(length)]
        row += [0.0] * (width - length)
        kth = sorted(row, reverse=True)[k - 1]
        picked.update((i, t) for t in range(length) if bool(mask[i, t]) and row[t] >= kth)
    return picked


def ref_blend(lp, mask, i, alpha, beta, uncertainty=None, paper=None):
    valid = ref_valid(mask, i)
    n = len(valid)
    if n == 0:
        return {}
    if paper is not None:
        return {t: float(alpha) if (i, t) in paper and alpha != 0 else 0.0 for t in valid}
    ranks = ref_ranks(lp, mask, i, uncertainty)
    count = math.floor(beta * n + 1e-9)
    out = {}
    for t in valid:
        k = ranks[t]
        if k >= count or alpha == 0:
            out[t] = 0.0
        elif alpha == "dyn":
            out[t] = 1.0 - k / (beta * n)
        else:
            out[t] = float(alpha)
    return out


def ref_token_objective(lp, old, adv, mask, kind, **p):
    """{(i, t): min(r A, clip(r) A)} (dual-clipped: max(., c A) where A < 0) for kind in
    grpo / gspo / mgpo; clip range ``eps_low`` / ``eps_high`` (default: the loss's)."""
    defaults = algos.options(kind)
    eps_low, eps_high = (
        p.get("eps_low", defaults["eps_low"]),
        p.get("eps_high", defaults["eps_high"]),
    )
    out = {}
    alpha, beta, c = p.get("alpha", 0.5), p.get("beta", 0.5), p.get("clip_ratio_c")
    uncertainty = p.get("entropy") if p.get("uncertainty") == "entropy" else None
    paper = None
    if kind == "mgpo" and p.get("selection") == "paper":
        u = uncertainty if uncertainty is not None else -lp
        rows = [[u[i, t].item() for t in range(lp.shape[1])] for i in range(lp.shape[0])]
        paper = ref_paper_selection(rows, mask, beta, p.get("padded_width", lp.shape[1]))
    for i in range(lp.shape[0]):
        valid = ref_valid(mask, i)
        if not valid:
            continue
        s = torch.exp(sum(lp[i, t] - old[i, t] for t in valid) / len(valid))
        blend = ref_blend(lp, mask, i, alpha, beta, uncertainty, paper) if kind == "mgpo" else {}
        for t in valid:
            a_t = ref_adv(adv, i, t)
            w = torch.exp(lp[i, t] - old[i, t])
            if kind == "grpo":
                r, rc = w, ref_clip(w, eps_low, eps_high)
            elif kind == "gspo":
                r, rc = s, ref_clip(s, eps_low, eps_high)
            else:
                a = blend[t]
                r = a * w + (1 - a) * s
                rc = a * ref_clip(w, eps_low, eps_high) + (1 - a) * ref_clip(s, eps_low, eps_high)
            objective = min(r * a_t, rc * a_t)
            if c is not None and a_t < 0:
                objective = max(objective, c * a_t)
            out[(i, t)] = objective
    return out


def ref_seq_mean_loss(per_token, mask, n_rows, zero):
    total = zero
    for i in range(mask.shape[0]):
        valid = ref_valid(mask, i)
        if valid:
            total = total + sum(per_token[(i, t)] for t in valid) / len(valid)
    return -total / n_rows


def ref_sapo(lp, old, adv, mask, n_rows, zero, tau_pos=1.0, tau_neg=1.05):
    per_token = {}
    for i in range(lp.shape[0]):
        for t in ref_valid(mask, i):
            a = ref_adv(adv, i, t)
            tau = tau_pos if a > 0 else tau_neg
            r = torch.exp(lp[i, t] - old[i, t])
            per_token[(i, t)] = (4.0 / tau) * torch.sigmoid(tau * (r - 1.0)) * a
    return ref_seq_mean_loss(per_token, mask, n_rows, zero)


def ref_cispo(lp, old, adv, mask, zero, eps_low=1.0, eps_high=4.0):
    total, tokens = zero, 0
    for i in range(lp.shape[0]):
        for t in ref_valid(mask, i):
            r = torch.exp(lp[i, t] - old[i, t]).detach()
            total = total + ref_clip(r, eps_low, eps_high) * ref_adv(adv, i, t) * lp[i, t]
            tokens += 1
    return -total / max(tokens, 1)


def ref_gmpo(lp, old, adv, mask, n_rows, zero, eps_low=0.4, eps_high=0.4):
    total = zero
    for i in range(lp.shape[0]):
        valid = ref_valid(mask, i)
        if not valid:
            continue
        sign = float(torch.sign(adv[i]))
        kept = zero
        for t in valid:
            log_r = lp[i, t] - old[i, t]
            clipped = torch.clamp(log_r, -eps_low, eps_high)
            kept = kept + sign * min(sign * log_r, sign * clipped)
        total = total + torch.exp(kept / len(valid)) * adv[i]
    return -total / n_rows


def ref_entropy_mask(entropy, mask, rho, threshold=None):
    """Keep the valid tokens whose entropy is at or above the ceil(rho * n)-th largest."""
    values = sorted(
        (entropy[i, t].item() for i in range(mask.shape[0]) for t in ref_valid(mask, i)),
        reverse=True,
    )
    if threshold is None:
        threshold = values[max(1, math.ceil(rho * len(values) - 1e-9)) - 1] if values else 0.0
    kept = torch.zeros_like(mask, dtype=torch.bool)
    for i in range(mask.shape[0]):
        for t in ref_valid(mask, i):
            kept[i, t] = entropy[i, t].item() >= threshold
    return kept


def ref_rollout_advantages(old, engine, adv, mask, mode, cap):
    """Advantages times pi_old / pi_engine per token, or per response (product over its valid
    tokens), truncated at or masked above ``cap``: always returned per token ``[N, L]``."""
    n, length = old.shape
    out = torch.zeros(n, length, dtype=F64)
    for i in range(n):
        valid = ref_valid(mask, i)
        seq = math.exp(sum((old[i, t] - engine[i, t]).item() for t in valid))
        for t in valid:
            w = seq if mode.startswith("sequence") else math.exp((old[i, t] - engine[i, t]).item())
            if mode.endswith("truncate"):
                w = min(w, cap)
            elif w > cap:
                w = 0.0
            out[i, t] = ref_adv(adv, i, t).item() * w
    return out


def reference_loss(name, lp, old, adv, mask, **p):
    """The loss ``name`` with options ``p`` (shared ones included), in plain loops."""
    n, length = lp.shape
    zero = lp.sum() * 0.0  # keeps empty sums attached to the graph
    valid = mask
    if p.get("entropy_top") is not None:
        mask = ref_entropy_mask(p["entropy"], mask, p["entropy_top"], p.get("entropy_threshold"))
    mode = p.get("rollout_correction", "none")
    if mode != "none":
        cap = p.get("rollout_correction_max", 2.0)
        full = ref_rollout_advantages(old, p["engine_logp"], adv, valid, mode, cap)
        if name == "gmpo":  # one weight per response: back to one advantage per response
            rows = [full[i, ref_valid(valid, i)[0]] if valid[i].any() else adv[i] for i in range(n)]
            full = torch.stack(rows)
        adv = full
    ref = p.get("ref_logp")
    coef = p.get("kl_coef", 0.0)
    kl = (
        {(i, t): ref_kl(lp, ref, i, t) for i in range(n) for t in ref_valid(mask, i)}
        if ref is not None
        else None
    )
    defaults = algos.options(name)
    n_rows = p.get("num_seqs", n)
    if name == "gpg":
        tokens = p.get("num_tokens", sum(len(ref_valid(mask, i)) for i in range(n)))
        total = sum(
            (lp[i, t] * ref_adv(adv, i, t) for i in range(n) for t in ref_valid(mask, i)), zero
        )
        return -p.get("alpha_age", 1.0) * total / max(tokens, 1)
    if name == "sapo":
        taus = {k: p.get(k, defaults[k]) for k in ("tau_pos", "tau_neg")}
        return ref_sapo(lp, old, adv, mask, n_rows, zero, **taus)
    el = p.get("eps_low", defaults.get("eps_low"))
    eh = p.get("eps_high", defaults.get("eps_high"))
    if name == "cispo":
        return ref_cispo(lp, old, adv, mask, zero, el, eh)
    if name == "gmpo":
        return ref_gmpo(lp, old, adv, mask, n_rows, zero, el, eh)
    if name in ("grpo", "gspo", "mgpo"):
        obj = ref_token_objective(lp, old, adv, mask, name, **p)
        loss = ref_seq_mean_loss(obj, mask, n_rows, zero)
        if kl is not None and coef:
            loss = loss - coef * ref_seq_mean_loss(kl, mask, n_rows, zero)
        return loss
    obj = ref_token_objective(lp, old, adv, mask, "grpo", **{"eps_low": el, "eps_high": eh, **p})
    if name == "dapo":
        denom = p.get("num_tokens", max(sum(len(ref_valid(mask, i)) for i in range(n)), 1))
    else:  # dr_grpo
        denom = n_rows * p.get("max_len", length)
    loss = -sum(obj.values(), zero) / denom
    if kl is not None and coef:
        loss = loss + coef * sum(kl.values(), zero) / denom
    return loss


def make_batch(seed, n=5, length=7, token_adv=False, dtype=F64, scale=0.3, ties=True):
    """Random batch: holes and padding anywhere, one-token and empty rows, ties in -logp,
    mixed-sign (and zero) advantages, log-ratios large enough to hit the clip."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(n, length, generator=g, dtype=F64) * 3
    if ties:  # exact duplicates inside rows
        lp[:, 1::3] = lp[:, :1]
        lp[:, -1] = lp[:, 0]
    old = lp + scale * torch.randn(n, length, generator=g, dtype=F64)
    mask = torch.rand(n, length, generator=g) < 0.75
    if n >= 3:
        mask[0] = False  # no valid token
        mask[1] = False
        mask[1, length // 2] = True  # one token, in the middle
    adv = (
        torch.randn(n, length, generator=g, dtype=F64)
        if token_adv
        else torch.randn(n, generator=g, dtype=F64)
    )
    if n >= 4:
        adv[3] = 0.0
    return lp.to(dtype), old.to(dtype), adv.to(dtype), mask


def side_tensors(seed, lp, ties=True):
    """Token entropies (with ties, so thresholds and rankings meet equal values) and engine
    log-probs near the old ones, for the shared options."""
    g = torch.Generator().manual_seed(seed + 1000)
    entropy = torch.rand(lp.shape, generator=g, dtype=F64) * 2
    if ties:
        entropy[:, ::2] = entropy[:, :1].clone()
    engine = lp + 0.4 * torch.randn(lp.shape, generator=g, dtype=F64)
    return entropy, engine


def loss_and_grad(name, lp, old, adv, mask, **params):
    leaf = lp.clone().requires_grad_(True)
    loss, metrics = algos.compute_loss(name, leaf, old, adv, mask, **params)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


def check_against_reference(name, params, lp, old, adv, mask, atol=1e-10):
    """Value and autograd gradient of ``compute_loss`` against :func:`reference_loss`."""
    loss, grad, metrics = loss_and_grad(name, lp, old, adv, mask, **params)
    leaf_ref = lp.clone().requires_grad_(True)
    ref = reference_loss(name, leaf_ref, old, adv, mask, **params)
    (grad_ref,) = torch.autograd.grad(ref, leaf_ref, allow_unused=True)
    if grad_ref is None:
        grad_ref = torch.zeros_like(lp)
    torch.testing.assert_close(loss, ref.detach(), atol=atol, rtol=1e-9)
    torch.testing.assert_close(grad, grad_ref, atol=atol, rtol=1e-9)
    assert metrics["loss"] == pytest.approx(loss.item())
    return loss, grad, metrics
