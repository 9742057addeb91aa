"""Group advantage estimators against plain per-group loops."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.errors import MgpoError
from stages.train import advantages as adv


def ref_groups(ids):
    groups: dict = {}
    for i, g in enumerate(ids):
        groups.setdefault(g, []).append(i)
    return groups


def ref_group_norm(rewards, ids, eps=1e-6, unbiased=True):
    out = [0.0] * len(rewards)
    for members in ref_groups(ids).values():
        vals = [rewards[i] for i in members]
        if len(set(vals)) == 1:
            continue
        mean = sum(vals) / len(vals)
        std = statistics.stdev(vals) if unbiased else statistics.pstdev(vals)
        for i in members:
            out[i] = (rewards[i] - mean) / (std + eps)
    return out


def ref_mean_only(rewards, ids):
    out = [0.0] * len(rewards)
    for members in ref_groups(ids).values():
        vals = [rewards[i] for i in members]
        if len(set(vals)) == 1:
            continue
        mean = sum(vals) / len(vals)
        for i in members:
            out[i] = rewards[i] - mean
    return out


REWARDS = [1.0, 0.0, 0.9, 0.1, 0.1, 0.1, 1.0, 1.0, 0.0, 0.5, 0.25]
IDS = ["p3", "p3", "p3", "p1", "p1", "p1", "p2", "p2", "p2", "p9", "p3"]


def test_group_norm_matches_loop():
    got = adv.group_normalized(torch.tensor(REWARDS, dtype=torch.float64), IDS)
    assert got.tolist() == pytest.approx(ref_group_norm(REWARDS, IDS), abs=1e-12)
    got = adv.group_normalized(torch.tensor(REWARDS, dtype=torch.float64), IDS, unbiased=False)
    assert got.tolist() == pytest.approx(ref_group_norm(REWARDS, IDS, unbiased=False), abs=1e-12)


def test_mean_only_matches_loop():
    got = adv.mean_centered(torch.tensor(REWARDS, dtype=torch.float64), IDS)
    assert got.tolist() == pytest.approx(ref_mean_only(REWARDS, IDS), abs=1e-12)


def test_equal_rewards_give_exact_zero_not_rounding_noise():
    # sum([0.1] * 3) / 3 != 0.1 in binary floating point
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7], dtype=torch.float64)
    ids = [0, 0, 0, 1, 1]
    for fn in adv.ESTIMATORS.values():
        out = fn(r, ids)
        assert out.tolist() == [0.0] * 5
        assert torch.isfinite(out).all()


def test_single_sample_group_is_degenerate_and_zero():
    out = adv.group_normalized(torch.tensor([0.3, 1.0, 0.0]), ["a", "b", "b"])
    assert out[0].item() == 0.0
    assert adv.degenerate_groups([0.3, 1.0, 0.0], ["a", "b", "b"]).tolist() == [True, False, False]


def test_tensor_ids_are_relabelled_in_first_seen_order():
    index, n = adv.group_index(torch.tensor([7, 2, 7, 5, 2]))
    assert n == 3 and index.tolist() == [0, 1, 0, 2, 1]
    index, n = adv.group_index(["x", "y", "x"])
    assert n == 2 and index.tolist() == [0, 1, 0]
    r = torch.tensor([1.0, 0.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    a = adv.group_normalized(r, torch.tensor([7, 2, 7, 5, 2]))
    b = adv.group_normalized(r, ["a", "b", "a", "c", "b"])
    assert torch.equal(a, b)


def test_dtypes():
    assert adv.group_normalized([1.0, 0.0], [0, 0]).dtype == torch.float32
    assert adv.group_normalized(torch.tensor([1, 0]), [0, 0]).dtype == torch.float32
    assert (
        adv.group_normalized(torch.tensor([1.0, 0.0], dtype=torch.float64), [0, 0]).dtype
        == torch.float64
    )


def test_gpg_correction():
    corr = adv.gpg_correction(REWARDS, IDS, threshold=0.6)
    # degenerate: p1 (3 equal) and p9 (single) -> M = 4 of B = 11
    assert corr.valid.tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False, True]
    assert corr.alpha_age == pytest.approx(11 / 7)
    assert corr.valid_frac == pytest.approx(7 / 11)
    assert corr.below_threshold is False
    assert adv.gpg_correction(REWARDS, IDS, threshold=0.7).below_threshold is True
    all_equal = adv.gpg_correction([1.0, 1.0], [0, 0])
    assert all_equal.alpha_age == 1.0 and all_equal.valid_frac == 0.0


def test_bad_input():
    with pytest.raises(MgpoError, match="group ids"):
        adv.group_normalized([1.0, 0.0], [0])
    with pytest.raises(MgpoError, match="response 1"):
        adv.mean_centered([1.0, math.nan], [0, 0])
    with pytest.raises(MgpoError, match="threshold"):
        adv.gpg_correction([1.0], [0], threshold=1.5)


# (reward, group id) pairs: the property tests' batches of grouped rewards
REWARDS_BY_GROUP = st.lists(
    st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.integers(0, 5)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(data=REWARDS_BY_GROUP)
def test_property_matches_loops(data):
    rewards = [r for r, _ in data]
    ids = [g for _, g in data]
    r = torch.tensor(rewards, dtype=torch.float64)
    assert adv.group_normalized(r, ids).tolist() == pytest.approx(
        ref_group_norm(rewards, ids), abs=1e-9
    )
    assert adv.mean_centered(r, ids).tolist() == pytest.approx(
        ref_mean_only(rewards, ids), abs=1e-12
    )
    # group-normalised advantages sum to zero per group
    out = adv.group_normalized(r, ids)
    for members in ref_groups(ids).values():
        assert abs(sum(out[i].item() for i in members)) < 1e-6


# ----------------------------------------------------------------------------- reward scaling


def ref_scaled(rewards, ids, scale, eps=1e-6):
    """(R - group mean) / (std + eps): the group's std, the whole batch's, or none."""
    out = [0.0] * len(rewards)
    batch_std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    for members in ref_groups(ids).values():
        vals = [rewards[i] for i in members]
        if len(set(vals)) == 1:
            continue
        mean = sum(vals) / len(vals)
        std = {"group": statistics.stdev(vals), "batch": batch_std, "none": None}[scale]
        for i in members:
            out[i] = (rewards[i] - mean) / (std + eps) if std is not None else rewards[i] - mean
    return out


def ref_median(vals):
    ordered = sorted(vals)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2.0


def ref_mc_grpo(rewards, ids, scale):
    """MC-GRPO in loops: (R - median_g) / (MAD + 1e-3), MAD of the group, of the batch, or 1."""
    out = [0.0] * len(rewards)
    batch_median = ref_median(rewards)
    batch_mad = ref_median([abs(r - batch_median) for r in rewards])
    for members in ref_groups(ids).values():
        vals = [rewards[i] for i in members]
        if len(set(vals)) == 1:
            continue
        med = ref_median(vals)
        mad = {"group": ref_median([abs(v - med) for v in vals]), "batch": batch_mad}.get(scale)
        for i in members:
            out[i] = (rewards[i] - med) / (mad + 1e-3) if mad is not None else rewards[i] - med
    return out


def ref_pivots(rewards, ids):
    """The median sample of each odd group (ties: the earlier one, in sorted order)."""
    out = [False] * len(rewards)
    for members in ref_groups(ids).values():
        if len(members) % 2:
            ordered = sorted(members, key=lambda i: (rewards[i], i))
            out[ordered[(len(members) - 1) // 2]] = True
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_reward_scaling_matches_loop(scale):
    r = torch.tensor(REWARDS, dtype=torch.float64)
    got = adv.estimate(r, IDS, baseline="mean", scale=scale)
    assert got.tolist() == pytest.approx(ref_scaled(REWARDS, IDS, scale), abs=1e-12)
    if scale == "group":
        assert torch.equal(got, adv.group_normalized(r, IDS))
    if scale == "none":
        assert torch.equal(got, adv.mean_centered(r, IDS))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_mc_grpo_matches_loop(scale):
    r = torch.tensor(REWARDS, dtype=torch.float64)
    got = adv.estimate(r, IDS, baseline="median", scale=scale)
    assert got.tolist() == pytest.approx(ref_mc_grpo(REWARDS, IDS, scale), abs=1e-9)


def test_mc_grpo_pivot_is_the_median_of_odd_groups_and_has_zero_advantage():
    rewards = [0.0, 1.0, 1.0, 0.5, 0.2, 0.9, 0.3, 0.3]
    ids = [0, 0, 0, 1, 1, 1, 1, 2]  # sizes 3 (odd), 4 (even), 1 (odd, degenerate)
    pivots = adv.median_pivots(rewards, ids).tolist()
    assert pivots == ref_pivots(rewards, ids) == [False, True, False] + [False] * 4 + [True]
    out = adv.median_centered(torch.tensor(rewards, dtype=torch.float64), ids)
    assert out[1].item() == 0.0
    # binary rewards in an odd group: the MAD is 0, so the advantages are +-1/1e-3
    binary = adv.median_centered(torch.tensor([1.0, 0.0, 0.0]), [0, 0, 0])
    assert binary.tolist() == pytest.approx([1000.0, 0.0, 0.0])


def test_mc_grpo_is_robust_to_one_outlier():
    """The reason for the median: one outlying reward flips the sign of a mean advantage."""
    rewards = torch.tensor([0.6, 0.5, 0.4, 10.0, 0.55], dtype=torch.float64)
    ids = [0] * 5
    mean_signs = torch.sign(adv.mean_centered(rewards, ids)).tolist()
    median_signs = torch.sign(adv.median_centered(rewards, ids)).tolist()
    assert mean_signs == [-1.0, -1.0, -1.0, 1.0, -1.0]  # 0.6 counts as below average
    assert median_signs == [1.0, -1.0, -1.0, 1.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    data=REWARDS_BY_GROUP,
    scale=st.sampled_from(["group", "batch", "none"]),
)
def test_property_scaling_and_median_match_loops(data, scale):
    rewards = [r for r, _ in data]
    ids = [g for _, g in data]
    r = torch.tensor(rewards, dtype=torch.float64)
    got = adv.estimate(r, ids, scale=scale)
    assert got.tolist() == pytest.approx(ref_scaled(rewards, ids, scale), abs=1e-6)
    got = adv.estimate(r, ids, baseline="median", scale=scale)
    assert got.tolist() == pytest.approx(ref_mc_grpo(rewards, ids, scale), abs=1e-6)
    assert adv.median_pivots(r, ids).tolist() == ref_pivots(rewards, ids)
