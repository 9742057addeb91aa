"""Group advantage estimators from a flat reward vector and group (prompt) ids (DESIGN.md §4).

All responses sampled for the same prompt form a group. Estimators are pure, vectorised (no
Python loop over groups) and keyed by name in :data:`ESTIMATORS`:

- ``group_norm`` (GRPO, GSPO, MGPO, DAPO, SAPO, CISPO, GMPO): ``(R - mean_g R) / (std_g R + eps)``;
- ``mean_only`` (Dr.GRPO, GPG): ``R - mean_g R``.

Two recipe keys vary them (:func:`estimate`): ``scale_rewards`` divides by the group's std
(``group``), the whole batch's (``batch``, TRL's option of that name) or nothing (``none``);
``baseline: median`` is MC-GRPO (:func:`median_centered`, :func:`median_pivots`).

A group whose rewards are all equal ("degenerate") gets an advantage of exactly 0: computing
``R - mean`` in floating point can leave ~1e-17 residues (e.g. three rewards of 0.1), and dividing
by ``std + 1e-6`` would turn them into spurious signal.

``std`` is the unbiased (Bessel-corrected) sample std, as ``torch.std`` in verl/EasyR1/TRL; a group
of one sample has std 0. Pass ``unbiased=False`` for the population std.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stages.errors import MgpoError

GroupIds = Tensor | Sequence[Hashable]


def group_index(group_ids: GroupIds) -> tuple[Tensor, int]:
    """Map arbitrary group ids (tensor of ints, or any hashables such as prompt-id strings) to
    contiguous ints ``0..G-1`` in first-seen order; returns (index ``[N]`` int64, G)."""
    if isinstance(group_ids, Tensor):
        if group_ids.dim() != 1:
            raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
        _, inverse = torch.unique(group_ids, return_inverse=True)
        # re-number in first-seen order so results do not depend on id values
        n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
        first = torch.full((n_groups,), inverse.numel(), dtype=torch.int64, device=inverse.device)
        first.scatter_reduce_(
            0, inverse, torch.arange(inverse.numel(), device=inverse.device), "amin"
        )
        relabel = torch.empty_like(first)
        relabel[torch.argsort(first)] = torch.arange(n_groups, device=first.device)
        return relabel[inverse], n_groups
    mapping: dict[Hashable, int] = {}
    index = [mapping.setdefault(g, len(mapping)) for g in group_ids]
    return torch.tensor(index, dtype=torch.int64), len(mapping)


def _rewards(rewards: Tensor | Sequence[float], n_ids: int) -> Tensor:
    r = torch.as_tensor(rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(r.shape)}")
    if r.numel() != n_ids:
        raise MgpoError(f"{r.numel()} rewards but {n_ids} group ids: one group id per response")
    bad = ~torch.isfinite(r.to(torch.float64))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise MgpoError(f"reward of response {row} is {r[row].item()}: rewards must be finite")
    return r


def _out_dtype(r: Tensor) -> torch.dtype:
    return r.dtype if r.is_floating_point() else torch.float32


@dataclass(frozen=True)
class GroupStats:
    """Per-sample group statistics (float64), all ``[N]``."""

    index: Tensor
    n_groups: int
    size: Tensor
    mean: Tensor
    std: Tensor
    degenerate: Tensor  # bool: every reward of the sample's group is equal


def group_stats(
    rewards: Tensor | Sequence[float], group_ids: GroupIds, *, unbiased: bool = True
) -> GroupStats:
    """Group size, mean, std and degeneracy broadcast back to every sample (scatter/gather)."""
    index, n_groups = group_index(group_ids)
    r = _rewards(rewards, index.numel()).to(torch.float64)
    index = index.to(r.device)
    size = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(
        0, index, torch.ones_like(r)
    )
    mean = torch.zeros_like(size).index_add_(0, index, r) / size.clamp(min=1)
    centred = r - mean[index]
    sq = torch.zeros_like(size).index_add_(0, index, centred * centred)
    dof = (size - 1.0) if unbiased else size
    std = torch.where(dof > 0, sq / dof.clamp(min=1), torch.zeros_like(sq)).sqrt()
    hi = torch.full_like(size, -math.inf).scatter_reduce_(0, index, r, "amax")
    lo = torch.full_like(size, math.inf).scatter_reduce_(0, index, r, "amin")
    degenerate = (hi == lo)[index]
    return GroupStats(index, n_groups, size[index], mean[index], std[index], degenerate)


def degenerate_groups(rewards: Tensor | Sequence[float], group_ids: GroupIds) -> Tensor:
    """Bool ``[N]``: the sample's group has all-equal rewards (zero advantage, no signal).

    DAPO's dynamic sampling drops these groups; GPG's correction counts them."""
    return group_stats(rewards, group_ids).degenerate


SCALES = ("group", "batch", "none")
BASELINES = ("mean", "median")


def group_normalized(
    rewards: Tensor | Sequence[float],
    group_ids: GroupIds,
    *,
    eps: float = 1e-6,
    unbiased: bool = True,
    scale: str = "group",
) -> Tensor:
    """GRPO advantage ``(R - mean_g R) / (std + eps)``; exactly 0 for degenerate groups.

    ``scale``: ``group`` divides by the group's std (GRPO), ``batch`` by the std of every reward
    of the batch (more robust for small groups), ``none`` by nothing (= :func:`mean_centered`)."""
    r = torch.as_tensor(rewards)
    st = group_stats(r, group_ids, unbiased=unbiased)
    adv = r.to(torch.float64) - st.mean
    if scale == "group":
        adv = adv / (st.std + eps)
    elif scale == "batch":
        values = r.to(torch.float64)
        std = values.std(unbiased=unbiased) if values.numel() > 1 else values.new_zeros(())
        adv = adv / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return adv.masked_fill(st.degenerate, 0.0).to(_out_dtype(r))


def mean_centered(rewards: Tensor | Sequence[float], group_ids: GroupIds) -> Tensor:
    """Dr.GRPO / GPG advantage ``R - mean_g R`` (no std division); exactly 0 for degenerate groups."""
    r = torch.as_tensor(rewards)
    st = group_stats(r, group_ids)
    adv = r.to(torch.float64) - st.mean
    return adv.masked_fill(st.degenerate, 0.0).to(_out_dtype(r))


MAD_EPS = 1e-3
"""Added to MC-GRPO's median absolute deviation (the authors' code): with 0/1 rewards and an odd
group the MAD is always 0, so the advantages become ``±1/1e-3``; AdamW's normalisation makes
such a constant factor nearly harmless, but the loss values and grad norms are large."""


def _group_medians(values: Tensor, index: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Median of ``values`` within each group ([G]; the mean of the two middle values for an even
    group) and, per sample, whether it sits at the lower middle position of its group's sorted
    order (ties in first-seen order): the pivot of an odd group."""
    by_value = torch.sort(values, stable=True).indices
    order = by_value[torch.sort(index[by_value], stable=True).indices]  # by group, then value
    sizes = torch.zeros(n_groups, dtype=torch.int64, device=values.device).index_add_(
        0, index, torch.ones_like(index)
    )
    starts = torch.cumsum(sizes, 0) - sizes
    lower, upper = starts + (sizes - 1) // 2, starts + sizes // 2
    ordered = values[order]
    medians = (ordered[lower] + ordered[upper]) / 2.0
    pivot = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    pivot[order[lower]] = True
    return medians, pivot


def median_centered(
    rewards: Tensor | Sequence[float], group_ids: GroupIds, *, scale: str = "group"
) -> Tensor:
    """MC-GRPO (Kim 2026, arXiv:2601.22582): ``(R - median_g R) / (MAD + 1e-3)``, the median
    absolute deviation ``median_g |R - median_g R|`` of the group (``scale=group``), of the whole
    batch's rewards around their median (``batch``), or no division (``none``); exactly 0 for
    degenerate groups. The median is far less moved by one outlying reward than the mean, so
    small groups flip fewer advantage signs. See :data:`MAD_EPS` and :func:`median_pivots`."""
    r = torch.as_tensor(rewards)
    index, n_groups = group_index(group_ids)
    values = _rewards(r, index.numel()).to(torch.float64)
    index = index.to(values.device)
    medians, _ = _group_medians(values, index, n_groups)
    adv = values - medians[index]
    if scale == "group":
        mad, _ = _group_medians(adv.abs(), index, n_groups)
        adv = adv / (mad[index] + MAD_EPS)
    elif scale == "batch":
        everyone = torch.zeros_like(index)
        centre, _ = _group_medians(values, everyone, 1)
        mad, _ = _group_medians((values - centre).abs(), everyone, 1)
        adv = adv / (mad + MAD_EPS)
    elif scale != "none":
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    degenerate = group_stats(values, index).degenerate
    return adv.masked_fill(degenerate, 0.0).to(_out_dtype(r))


def median_pivots(rewards: Tensor | Sequence[float], group_ids: GroupIds) -> Tensor:
    """Bool ``[N]``: the median sample of each odd-sized group, which MC-GRPO leaves out of the
    update (its advantage is 0; the paper samples ``n + 1`` so that ``n`` samples remain). Even
    groups have no pivot (their median lies between two samples)."""
    index, n_groups = group_index(group_ids)
    values = _rewards(torch.as_tensor(rewards), index.numel()).to(torch.float64)
    index = index.to(values.device)
    _, pivot = _group_medians(values, index, n_groups)
    sizes = torch.zeros(n_groups, dtype=torch.int64, device=values.device).index_add_(
        0, index, torch.ones_like(index)
    )
    return pivot & (sizes[index] % 2 == 1)


def estimate(
    rewards: Tensor | Sequence[float],
    group_ids: GroupIds,
    *,
    baseline: str = "mean",
    scale: str = "group",
) -> Tensor:
    """Advantages with a ``mean`` (GRPO) or ``median`` (MC-GRPO) baseline and a ``group``,
    ``batch`` or no (``none``) scale."""
    if baseline == "median":
        return median_centered(rewards, group_ids, scale=scale)
    if baseline != "mean":
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    return group_normalized(rewards, group_ids, scale=scale)


ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "group_norm": group_normalized,
    "mean_only": mean_centered,
}
"""Advantage estimators by name; ``algos.ADVANTAGE_ESTIMATOR`` names the default per algorithm."""

ESTIMATOR_SCALE = {"group_norm": "group", "mean_only": "none"}
"""The ``scale`` of :func:`estimate` that reproduces each named estimator."""


@dataclass(frozen=True)
class GpgCorrection:
    """GPG batch correction: ``alpha_age = B / (B - M)`` and which samples carry signal."""

    alpha_age: float
    valid: Tensor  # bool [N]: sample is in a group with non-equal rewards
    valid_frac: float  # (B - M) / B
    below_threshold: bool  # valid_frac < threshold: the trainer should carry valid samples over


def gpg_correction(
    rewards: Tensor | Sequence[float], group_ids: GroupIds, *, threshold: float | None = None
) -> GpgCorrection:
    """``alpha_age = B/(B-M)``, M = samples in all-equal groups (their advantage is 0, so the
    batch gradient is rescaled as if only valid samples were there). If every group is
    degenerate the loss is 0 whatever the factor: ``alpha_age`` is then 1.0.

    ``threshold`` (GPG's beta_th, in [0, 1]): below that fraction of valid samples the trainer
    should keep the valid ones and sample more before updating (carry-over is the trainer's job).
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise MgpoError(f"GPG valid-sample threshold must be in [0, 1], got {threshold}")
    valid = ~degenerate_groups(rewards, group_ids)
    total = valid.numel()
    n_valid = int(valid.sum())
    alpha_age = total / n_valid if n_valid else 1.0
    frac = n_valid / total if total else 0.0
    below = threshold is not None and frac < threshold
    return GpgCorrection(alpha_age, valid, frac, below)
