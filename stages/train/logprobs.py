"""Lean token log-probs and entropies from logits or from hidden states (DESIGN.md §4 metrics).

The naive ``log_softmax(logits.float() / T).gather(...)`` materialises several ``[tokens, vocab]``
float32 copies (upcast, scaled, log-softmax, and for the entropy ``p`` and ``p * logp``) and keeps
one alive for backward: at vocab 151,936 that is 0.6 GB per 1,024 tokens per copy. Here the
tokens are processed in chunks inside a custom autograd function that saves only the per-token
log-normaliser ``lse`` (and entropy) and recomputes each chunk's softmax in backward, so the
extra memory is a few ``[chunk, vocab]`` float32 buffers whatever the number of tokens.

- :func:`logprobs_from_logits` takes logits ``[B, T, V]`` (or ``[M, V]``) the model already made.
- :func:`logprobs_from_hidden` takes the last hidden states and the ``lm_head`` weight, so the full
  logits never exist at once, in forward or backward (the matmul is recomputed per chunk).

Maths is float32 whatever the input dtype (float64 stays float64); gradients come back in the
input dtype. ``temperature`` divides the logits, as in sampling. Targets outside ``[0, V)`` (e.g.
-100 padding) give log-prob 0 and no gradient through the log-prob; their entropy is still
computed (it does not depend on the target).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from stages.errors import MgpoError

CHUNK_ELEMENTS = {"cpu": 2**21, "other": 2**25}
"""Default chunk size in logits per device type. CPU: 2M (8 MB float32, 13 tokens at vocab
151,936) so a chunk's passes stay in cache, which makes the lean path *faster* than the naive one
there; accelerators: 32M (220 tokens) to keep the kernel count low."""


class TokenLogprobs(NamedTuple):
    logp: Tensor  # [..., T] float32 (float64 for float64 input)
    entropy: Tensor | None  # same shape, None unless asked for


def _chunk_rows(vocab: int, chunk_tokens: int | None, device: torch.device) -> int:
    if chunk_tokens is None:
        budget = CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "other"]
        return max(1, budget // max(vocab, 1))
    if chunk_tokens < 1:
        raise MgpoError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return int(chunk_tokens)


def _check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise MgpoError(f"temperature must be > 0, got {temperature!r}")
    return float(temperature)


def _math_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class _Buffers:
    """Two float ``[rows, V]`` work buffers reused by every chunk of one call.

    On CPU a fresh multi-megabyte tensor is page-faulted in on first touch (glibc hands large
    blocks back to the OS on free), which costs more than the arithmetic on it; reusing two
    buffers keeps the whole computation at a few in-place passes per chunk."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> None:
        self.z = torch.empty(rows, vocab, dtype=dtype, device=device)
        self.e = torch.empty_like(self.z)

    def load(self, block: Tensor, inv_t: float) -> tuple[Tensor, Tensor]:
        """Scaled float copy of a ``[c, V]`` logits block, and a scratch buffer of that shape."""
        c = block.shape[0]
        z, e = self.z[:c], self.e[:c]
        z.copy_(block)
        if inv_t != 1.0:
            z.mul_(inv_t)
        return z, e


def _chunk_forward(
    z: Tensor, e: Tensor, targets: Tensor, valid: Tensor, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Log-prob of the target, log-normaliser and entropy of a ``[c, V]`` chunk of scaled logits
    ``z`` (modified in place: shifted by its row max); ``e`` is scratch."""
    zmax = z.amax(dim=1, keepdim=True)
    z.sub_(zmax)
    target_z = z.gather(1, targets[:, None]).squeeze(1)
    torch.exp(z, out=e)
    total = e.sum(dim=1)
    log_total = total.log()
    logp = (target_z - log_total) * valid
    entropy = None
    if with_entropy:  # H = log sum e - sum(e * z) / sum e   (z already shifted)
        entropy = log_total - e.mul_(z).sum(dim=1) / total
    return logp, zmax.squeeze(1) + log_total, entropy


def _chunk_grad(
    z: Tensor,
    e: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Tensor | None,
    g_logp: Tensor,
    g_entropy: Tensor | None,
) -> Tensor:
    """d(loss)/d(scaled logits) of a chunk, built in ``e`` (returned); ``z`` is overwritten.

    d logp_y / dz = onehot(y) - p;  d H / dz = -p * (log p + H)."""
    z.sub_(lse[:, None])  # log p
    torch.exp(z, out=e)  # p
    if g_entropy is not None and entropy is not None:
        coef = z.add_(entropy[:, None]).mul_(g_entropy[:, None]).add_(g_logp[:, None])
        e.mul_(coef).neg_()
    else:
        e.mul_(-g_logp[:, None])
    e.scatter_add_(1, targets[:, None], g_logp[:, None])
    return e


def _targets(targets: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    t = targets.reshape(-1).to(torch.int64)
    valid = (t >= 0) & (t < vocab)
    return t.clamp(0, vocab - 1), valid


def _row_blocks(m: int, rows: int) -> list[slice]:
    return [slice(i, min(i + rows, m)) for i in range(0, m, rows)]


def _blocks_3d(x: Tensor, rows: int) -> list[tuple[Tensor, slice]]:
    """``[c, V]`` views of a ``[B, T, V]`` tensor with their slice of the flattened tokens."""
    per = x.shape[1]
    return [
        (x[b, sl], slice(b * per + sl.start, b * per + sl.stop))
        for b in range(x.shape[0])
        for sl in _row_blocks(per, rows)
    ]


def _forward_chunks(
    chunks: Iterable[tuple[Tensor, Tensor, slice]],
    targets: Tensor,
    vf: Tensor,
    with_entropy: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob, log-normaliser and entropy of every token, from ``(z, e, tokens)`` chunks of
    scaled float logits (both paths produce those chunks their own way)."""
    logp = torch.empty(vf.shape[0], dtype=vf.dtype, device=vf.device)
    lse = torch.empty_like(logp)
    ent = torch.zeros_like(logp)
    for z, e, sl in chunks:
        lp, ls, en = _chunk_forward(z, e, targets[sl], vf[sl], with_entropy)
        logp[sl], lse[sl] = lp, ls
        if en is not None:
            ent[sl] = en
    return logp, lse, ent


def _grad_chunks(
    ctx: Any,
    chunks: Iterable[tuple[Tensor, Tensor, slice]],
    targets: Tensor,
    vf: Tensor,
    lse: Tensor,
    ent: Tensor,
    g_logp: Tensor | None,
    g_ent: Tensor | None,
) -> Iterator[tuple[slice, Tensor]]:
    """d(loss)/d(raw logits) of each chunk (``(tokens, gradient)``), the chunks recomputed as in
    forward; the gradient lives in a reused buffer, valid until the next chunk."""
    dtype = lse.dtype
    g_lp = (torch.zeros_like(lse) if g_logp is None else g_logp.to(dtype)) * vf
    g_en = g_ent.to(dtype) if (g_ent is not None and ctx.with_entropy) else None
    for z, e, sl in chunks:
        g = _chunk_grad(
            z, e, targets[sl], lse[sl], ent[sl], g_lp[sl], None if g_en is None else g_en[sl]
        )
        if ctx.inv_t != 1.0:
            g.mul_(ctx.inv_t)
        yield sl, g


class _LogitsLogprobs(torch.autograd.Function):
    """Chunked log-prob/entropy over logits ``[B, T, V]``: chunks are views, never a whole copy
    (a contiguous input arrives as ``[1, B*T, V]`` so chunks may span rows)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        targets: Tensor,
        valid: Tensor,
        inv_t: float,
        rows: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        dtype = _math_dtype(logits)
        vf = valid.to(dtype)
        buf = _Buffers(min(rows, logits.shape[1]), logits.shape[2], dtype, logits.device)
        chunks = ((*buf.load(block, inv_t), sl) for block, sl in _blocks_3d(logits, rows))
        logp, lse, ent = _forward_chunks(chunks, targets, vf, with_entropy)
        ctx.save_for_backward(logits, targets, vf, lse, ent)
        ctx.inv_t, ctx.rows, ctx.with_entropy = inv_t, rows, with_entropy
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(
        ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None
    ) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, targets, vf, lse, ent = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        buf = _Buffers(min(ctx.rows, logits.shape[1]), logits.shape[2], lse.dtype, logits.device)
        chunks = ((*buf.load(block, ctx.inv_t), sl) for block, sl in _blocks_3d(logits, ctx.rows))
        outs = (out for out, _ in _blocks_3d(grad, ctx.rows))
        for (_, g), out in zip(
            _grad_chunks(ctx, chunks, targets, vf, lse, ent, g_logp, g_ent), outs, strict=True
        ):
            out.copy_(g)
        return grad, None, None, None, None, None


class _HiddenBuffers(_Buffers):
    """Work buffers plus one in the model dtype for the chunk matmul (and its gradient)."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, weight: Tensor) -> None:
        super().__init__(rows, vocab, dtype, weight.device)
        same = weight.dtype == dtype
        self.raw = (
            self.z if same else torch.empty(rows, vocab, dtype=weight.dtype, device=weight.device)
        )

    def logits(
        self, h: Tensor, weight: Tensor, bias: Tensor | None, inv_t: float
    ) -> tuple[Tensor, Tensor]:
        """Scaled float logits of a hidden chunk, computed like ``F.linear`` in the model dtype."""
        c = h.shape[0]
        raw, z = self.raw[:c], self.z[:c]
        if bias is None:
            torch.mm(h, weight.t(), out=raw)
        else:
            torch.addmm(bias, h, weight.t(), out=raw)
        if raw is not z:
            z.copy_(raw)
        if inv_t != 1.0:
            z.mul_(inv_t)
        return z, self.e[:c]

    def in_model_dtype(self, g: Tensor) -> Tensor:
        if self.raw is self.z:
            return g
        raw = self.raw[: g.shape[0]]
        return raw.copy_(g)


class _HiddenLogprobs(torch.autograd.Function):
    """Chunked ``hidden @ weight.T (+ bias)`` then log-prob/entropy; logits exist one chunk at a
    time in forward and backward (the chunk matmul is recomputed in backward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        valid: Tensor,
        inv_t: float,
        rows: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        m = hidden.shape[0]
        dtype = _math_dtype(weight)
        vf = valid.to(dtype)
        buf = _HiddenBuffers(min(rows, m), weight.shape[0], dtype, weight)
        chunks = ((*buf.logits(hidden[sl], weight, bias, inv_t), sl) for sl in _row_blocks(m, rows))
        logp, lse, ent = _forward_chunks(chunks, targets, vf, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, vf, lse, ent)
        ctx.inv_t, ctx.rows, ctx.with_entropy = inv_t, rows, with_entropy
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(
        ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None
    ) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, targets, vf, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        m = hidden.shape[0]
        grad_h = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_h else None
        # accumulated in the weight's dtype: one rounding per chunk, like bf16 grad accumulation
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if (need_b and bias is not None) else None
        buf = _HiddenBuffers(min(ctx.rows, m), weight.shape[0], lse.dtype, weight)
        chunks = (
            (*buf.logits(hidden[sl], weight, bias, ctx.inv_t), sl)
            for sl in _row_blocks(m, ctx.rows)
        )
        for sl, g in _grad_chunks(ctx, chunks, targets, vf, lse, ent, g_logp, g_ent):
            h = hidden[sl]
            g = buf.in_model_dtype(g)
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[sl])
            if grad_w is not None:
                grad_w.addmm_(g.t(), h)
            if grad_b is not None:
                grad_b.add_(g.sum(0))
        return grad_h, grad_w, grad_b, None, None, None, None, None


def logprobs_from_logits(
    logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk_tokens: int | None = None,
) -> TokenLogprobs:
    """Log-prob of ``targets`` under ``softmax(logits / temperature)`` and the entropy per token.

    ``logits`` is ``[..., V]`` with ``targets`` of shape ``[...]`` (aligned: the caller shifts).
    A non-contiguous ``logits`` (e.g. ``out.logits[:, :-1]``) is processed per leading row rather
    than copied whole.
    """
    inv_t = 1.0 / _check_temperature(temperature)
    vocab = logits.shape[-1]
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not align"
        )
    rows = _chunk_rows(vocab, chunk_tokens, logits.device)
    flat_t, valid = _targets(targets, vocab)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if logits.is_contiguous():
        x3 = logits.view(1, -1, vocab)
    else:  # e.g. out.logits[:, :-1]: iterate per leading row over views
        x3 = logits.reshape(-1, *logits.shape[-2:]) if logits.dim() > 3 else logits
    logp, ent = _LogitsLogprobs.apply(x3, flat_t, valid, inv_t, rows, with_entropy)
    return TokenLogprobs(
        logp.view(targets.shape), ent.view(targets.shape) if with_entropy else None
    )


def logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk_tokens: int | None = None,
) -> TokenLogprobs:
    """As :func:`logprobs_from_logits` for ``logits = hidden @ weight.T + bias`` without ever
    holding more than one chunk of logits (the ``lm_head`` is applied per chunk, twice).

    ``hidden`` ``[..., H]``, ``weight`` ``[V, H]`` (e.g. ``model.lm_head.weight``), ``targets``
    ``[...]``. Gradients flow to hidden, weight and bias.
    """
    inv_t = 1.0 / _check_temperature(temperature)
    vocab, width = weight.shape
    if hidden.shape[-1] != width or hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and targets "
            f"{tuple(targets.shape)} do not align"
        )
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}")
    rows = _chunk_rows(vocab, chunk_tokens, hidden.device)
    flat_t, valid = _targets(targets, vocab)
    logp, ent = _HiddenLogprobs.apply(
        hidden.reshape(-1, width), weight, bias, flat_t, valid, inv_t, rows, with_entropy
    )
    return TokenLogprobs(
        logp.view(targets.shape), ent.view(targets.shape) if with_entropy else None
    )
