"""Which tokens MGPO blends: the most uncertain of each response, found exactly.

- :func:`top_count`: the ``counts[i]`` most uncertain valid tokens of row i (ties: the earlier
  position), from one per-row threshold (``kthvalue``), no ranking: what fixed ``alpha`` needs;
- :func:`token_ranks`: the full rank of every valid token, what ``alpha="dyn"`` needs;
- :func:`paper_selection`: the MGPO paper's Algorithm 1 listing, transcribed literally.
"""

from __future__ import annotations

import torch
from torch import Tensor

_FLOOR_TOL = 1e-9
"""``floor(beta * n)`` is taken as ``floor(beta * n + 1e-9)`` so that e.g. 0.29 * 100 selects 29
tokens, not 28 (binary rounding), matching what a user reading the formula expects."""


def selection_counts(lengths: Tensor, beta: float) -> Tensor:
    """``floor(beta * |o_i|)`` per response (with the tolerance described in ``_FLOOR_TOL``)."""
    return torch.floor(lengths.to(torch.float64) * beta + _FLOOR_TOL).to(torch.int64)


def top_count(u: Tensor, mask: Tensor, counts: Tensor) -> Tensor:
    """1.0 on the ``counts[i]`` most uncertain valid tokens of row ``i``, 0 elsewhere.

    Exactly the tokens of rank ``< counts[i]`` in :func:`token_ranks` (ties go to the earlier
    position), found from each row's ``counts[i]``-th largest uncertainty with one ``topk`` call
    instead of a sort (2-3x cheaper on CPU; ``kthvalue`` measured ~15% slower than ``topk``).
    Rows need different ``k``: each row gets ``k - counts[i]`` extra values of ``+finfo.max``,
    which come first, so a shared ``k`` (the largest count) lands on every row's own threshold.
    Tokens tied at the threshold are taken in position order only when a row has more of them
    than it needs. Masks are built with arithmetic, not ``torch.where`` (much slower on CPU, see
    ``shared.masked_extrema``).
    """
    k = int(counts.max()) if counts.numel() else 0
    if k == 0:
        return torch.zeros(u.shape, dtype=u.dtype, device=u.device)
    big = torch.finfo(u.dtype).max
    mf = mask.to(u.dtype)
    key = (mf - 1.0).mul_(big).addcmul_(u, mf)  # padding at -big, below every valid token
    extra = k - counts
    width = int(extra.max())
    if width:
        fill = (torch.arange(width, device=u.device)[None, :] < extra[:, None]).to(u.dtype)
        key_k = torch.cat([key, fill.mul_(2.0).sub_(1.0).mul_(big)], 1)  # +big, then -big
    else:
        key_k = key
    threshold = torch.topk(key_k, k, dim=1, sorted=False).values.amin(1, keepdim=True)
    # 1.0 where key >= threshold: sign(key - threshold) + 1, capped at 1 (float arithmetic;
    # a comparison's bool output and its conversion cost ~6x more on CPU)
    selected = (key - threshold).sign_().add_(1.0).clamp_(max=1.0)
    if selected.sum() > counts.sum():  # a row has more ties at its threshold than it needs
        above = key > threshold  # (never fewer): take those in position order
        at = key == threshold
        at &= at.cumsum(1) <= counts[:, None] - above.sum(1, keepdim=True)
        selected = (above | at).to(u.dtype)
    return selected


def paper_selection(u: Tensor, mf: Tensor, beta: float, padded_width: float | None) -> Tensor:
    """The MGPO paper's Algorithm 1 listing, literally: ``k = int(beta * L)`` with ``L`` the
    padded response width; ``topk`` of the uncertainty over each padded row (padding counts as
    0, the value ``-log p`` of padding has in the trainer); every token at or above the k-th
    value is selected (then masked to valid tokens).

    How it differs from ``per_response`` (``floor(beta * |o_i|)`` per response): ``k`` comes from
    the padded width, so a short response in a batch of long ones gets far more of its tokens
    selected (often all of them) and a batch's padding changes the selection; every token tied
    with the k-th value is selected, so more than ``k`` can be; ``int()`` truncates without
    ``per_response``'s decimal tolerance (0.29 * 100 gives 28).
    """
    n, length = u.shape
    width = length if padded_width is None else int(padded_width)
    if width < length:
        raise ValueError(f"padded_width {width} is narrower than the batch ({length} columns)")
    k = int(beta * width)
    if k == 0:
        return torch.zeros_like(mf)
    row = u * mf
    if width > length:
        row = torch.cat([row, row.new_zeros(n, width - length)], 1)
    kth = torch.topk(row, k, dim=1, sorted=False).values.amin(1, keepdim=True)
    # 1.0 where the value is at or above the k-th: sign(x - kth) + 1, capped at 1 (see top_count)
    return (row[:, :length] - kth).sign_().add_(1.0).clamp_(max=1.0).mul_(mf)


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
