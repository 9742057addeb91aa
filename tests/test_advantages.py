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


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.integers(0, 5)),
        min_size=1,
        max_size=30,
    )
)
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
