"""The loss family beyond the paper's baselines: SAPO, CISPO, GMPO, the high-entropy token mask,
rollout/trainer mismatch correction, dual-clip and MGPO's variants, against plain float64 loops
(value and autograd gradient) and the invariants their papers state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_refs import (
    F64,
    check_against_reference,
    loss_and_grad,
    make_batch,
    ref_clip,
    ref_seq_mean_loss,
    ref_valid,
    side_tensors,
)

from stages.train import algos
from stages.train.losses import modifiers
from stages.train.losses.selection import selection_counts, token_ranks, top_count

# ----------------------------------------------------------------------------- SAPO


def test_sapo_gate_weight_is_one_at_ratio_one_and_below_elsewhere():
    """d/dlp of (4/tau) sigmoid(tau (r - 1)) is 4 p (1 - p) r: exactly 1 at r = 1, for any tau."""
    for tau in (0.5, 1.0, 1.05, 3.0):
        lp = torch.tensor([[-1.0]], dtype=F64, requires_grad=True)
        loss, _ = algos.compute_loss(
            "sapo", lp, lp.detach().clone(), torch.tensor([-1.0], dtype=F64),
            torch.ones(1, 1, dtype=torch.bool), tau_pos=tau, tau_neg=tau,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(loss, lp)
        assert grad.item() == 1.0  # -(-1) * weight 1, exactly
    r = torch.tensor([0.5, 0.9, 1.1, 2.0], dtype=F64)
    p = torch.sigmoid(r - 1.0)
    lp = torch.log(r)[None, :].clone().requires_grad_(True)
    loss, metrics = algos.compute_loss(
        "sapo", lp, torch.zeros(1, 4, dtype=F64), torch.tensor([1.0], dtype=F64),
        torch.ones(1, 4, dtype=torch.bool), tau_pos=1.0,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(-grad[0] * 4, 4 * p * (1 - p) * r)
    assert metrics["gate_mean"] == pytest.approx((4 * p * (1 - p) * r).mean().item())


def test_sapo_is_smooth_where_grpo_cuts_the_gradient_off():
    """A token just past the clip: GRPO's gradient is 0, SAPO's is not; far from r = 1 the
    gate fades SAPO's out too (weight 4 p (1 - p) r: 1.41 at r = 1.5, under 0.01 at r = 10)."""
    old, adv = torch.zeros(1, 1, dtype=F64), torch.tensor([1.0], dtype=F64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    near = torch.tensor([[math.log(1.5)]], dtype=F64)
    assert loss_and_grad("grpo", near, old, adv, mask)[1].item() == 0.0
    assert loss_and_grad("sapo", near, old, adv, mask)[1].item() == pytest.approx(-1.41, abs=0.01)
    far = torch.tensor([[math.log(10.0)]], dtype=F64)
    assert -0.01 < loss_and_grad("sapo", far, old, adv, mask)[1].item() < 0.0


# ----------------------------------------------------------------------------- CISPO


def test_cispo_weight_is_a_stop_gradient_constant():
    """The gradient is exactly -clip(r) A / T per valid token: no term from d r / d lp, and
    tokens whose ratio is capped keep a (capped) gradient."""
    lp, old, adv, mask = make_batch(3, n=6, length=8, scale=1.0)
    _, grad, metrics = loss_and_grad("cispo", lp, old, adv, mask)
    r = torch.exp(lp - old)
    weight = torch.clamp(r, 0.0, 5.0)
    expected = -(weight * adv[:, None] * mask) / mask.sum()
    torch.testing.assert_close(grad, expected.to(F64), atol=1e-12, rtol=1e-10)
    capped = (r > 5.0) & mask
    assert capped.any() and (grad[capped & (adv[:, None] != 0)] != 0).all()
    assert metrics["clip_frac_high"] == pytest.approx(capped.sum().item() / mask.sum().item())


# ----------------------------------------------------------------------------- GMPO


def test_gmpo_clips_in_log_space_on_the_pessimistic_side():
    """A > 0: a log-ratio above eps_high is clipped (no gradient), one below -eps_low is not;
    A < 0: the other way round."""
    lp = torch.tensor([[0.6, -0.6]], dtype=F64)
    old, mask = torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=torch.bool)
    _, grad, m = loss_and_grad("gmpo", lp, old, torch.tensor([1.0], dtype=F64), mask)
    assert grad[0, 0] == 0.0 and grad[0, 1] != 0.0
    assert m["clip_frac_high"] == 0.5 and m["clip_frac_low"] == 0.0
    _, grad, m = loss_and_grad("gmpo", lp, old, torch.tensor([-1.0], dtype=F64), mask)
    assert grad[0, 0] != 0.0 and grad[0, 1] == 0.0
    assert m["clip_frac_low"] == 0.5
    # the loss is exp of the mean kept log-ratio times -A
    loss, _, _ = loss_and_grad("gmpo", lp, old, torch.tensor([2.0], dtype=F64), mask)
    assert loss.item() == pytest.approx(-2.0 * math.exp((0.4 - 0.6) / 2))


# ----------------------------------------------------------------------------- dual-clip


@pytest.mark.parametrize("name", ["grpo", "gspo", "mgpo", "dapo", "dr_grpo"])
def test_dual_clip_bounds_negative_advantage_losses(name):
    """With A < 0 and a huge ratio the per-token loss is at most -c A; without dual-clip it
    grows with the ratio. A > 0 is untouched. Far-away c equals no dual-clip."""
    lp, old, adv, mask = make_batch(5, n=6, length=8, scale=1.5)
    params = {"eps_low": 0.2, "eps_high": 0.2}
    loss, grad, m = loss_and_grad(name, lp, old, adv, mask, clip_ratio_c=1.5, **params)
    plain = loss_and_grad(name, lp, old, adv, mask, **params)
    assert m["clip_frac_dual"] > 0 and loss.item() < plain[0].item()
    far = loss_and_grad(name, lp, old, adv, mask, clip_ratio_c=1e6, **params)
    torch.testing.assert_close(far[0], plain[0])
    torch.testing.assert_close(far[1], plain[1])
    assert far[2]["clip_frac_dual"] == 0.0
    positive = adv.clamp(min=0)
    torch.testing.assert_close(
        loss_and_grad(name, lp, old, positive, mask, clip_ratio_c=1.5, **params)[1],
        loss_and_grad(name, lp, old, positive, mask, **params)[1],
    )


# ----------------------------------------------------------------------------- entropy mask


MASKABLE = sorted(algos.TOKEN_LEVEL)


@pytest.mark.parametrize("name", MASKABLE)
@pytest.mark.parametrize("rho", [0.2, 0.5, 1.0])
def test_entropy_mask_matches_reference(name, rho):
    lp, old, adv, mask = make_batch(4, n=6, length=9)
    entropy, _ = side_tensors(4, lp)
    _, _, m = check_against_reference(
        name, {"entropy_top": rho, "entropy": entropy}, lp, old, adv, mask
    )
    n_valid = int(mask.sum())
    kept = m["tokens"]
    assert m["tokens_valid"] == n_valid
    assert kept >= math.ceil(rho * n_valid)  # ties at the threshold are all kept
    assert m["entropy_kept_frac"] == pytest.approx(kept / n_valid)
    assert m["entropy"] == pytest.approx(entropy[mask].mean().item())


@pytest.mark.parametrize("name", MASKABLE)
def test_entropy_mask_at_rho_one_is_the_unmasked_loss(name):
    lp, old, adv, mask = make_batch(6, n=6, length=9)
    entropy, _ = side_tensors(6, lp)
    masked = loss_and_grad(name, lp, old, adv, mask, entropy=entropy, entropy_top=1.0)
    plain = loss_and_grad(name, lp, old, adv, mask, entropy=entropy)
    torch.testing.assert_close(masked[0], plain[0], atol=0, rtol=0)
    torch.testing.assert_close(masked[1], plain[1], atol=0, rtol=0)


def test_entropy_threshold_is_the_kth_largest_with_ties_kept():
    entropy = torch.tensor([[3.0, 1.0, 2.0, 2.0], [0.5, 2.0, 9.0, 4.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    # valid: 3, 1, 2, 2, 0.5, 2, 4 -> top ceil(0.3 * 7) = 3: 4, 3, then 2 (tied three times)
    threshold = modifiers.entropy_threshold(entropy, mask, 0.3)
    assert threshold == 2.0
    kept = modifiers.keep_high_entropy(entropy, mask, threshold)
    assert kept.tolist() == [[True, False, True, True], [False, True, False, True]]
    assert modifiers.entropy_threshold(entropy, mask, 1.0) == 0.5
    assert modifiers.entropy_threshold(entropy, torch.zeros_like(mask), 0.5) == math.inf


@pytest.mark.parametrize("name", MASKABLE)
def test_entropy_mask_micro_batches_with_the_steps_threshold_add_up(name):
    """The threshold is over the whole step: micro-batches given the step's threshold and kept-
    token count add up to the whole batch's loss and gradient. With their own thresholds
    (per micro-batch) they would not."""
    lp, old, adv, mask = make_batch(8, n=8, length=10)
    entropy, _ = side_tensors(8, lp)
    rho = 0.3
    whole = loss_and_grad(name, lp, old, adv, mask, entropy=entropy, entropy_top=rho)
    threshold = modifiers.entropy_threshold(entropy, mask, rho)
    kept = modifiers.keep_high_entropy(entropy, mask, threshold)
    counts = {"num_seqs": 8.0, "num_tokens": float(kept.sum()), "max_len": 10.0}
    norm = {k: v for k, v in counts.items() if k in algos.options(name)}
    parts = [
        loss_and_grad(
            name,
            lp[sl],
            old[sl],
            adv[sl],
            mask[sl],
            entropy=entropy[sl],
            entropy_top=rho,
            entropy_threshold=threshold,
            **norm,
        )  # fmt: skip
        for sl in (slice(0, 3), slice(3, 8))
    ]
    torch.testing.assert_close(parts[0][0] + parts[1][0], whole[0])
    torch.testing.assert_close(torch.cat([parts[0][1], parts[1][1]]), whole[1])


# ----------------------------------------------------------------------------- rollout correction

MODES = ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(algos.ALGORITHMS))
def test_rollout_correction_matches_reference(name, mode):
    if name == "gmpo" and mode.startswith("token"):
        pytest.skip("gmpo takes sequence weights only (a one-line error, tested in test_algos)")
    lp, old, adv, mask = make_batch(9, n=6, length=6)
    _, engine = side_tensors(9, old)  # the engine's log-probs, close to the trainer's old ones
    params = {"rollout_correction": mode, "rollout_correction_max": 1.2, "engine_logp": engine}
    _, _, m = check_against_reference(name, params, lp, old, adv, mask)
    assert 0.0 <= m["rollout_capped_frac"] <= 1.0
    assert m["rollout_capped_frac"] > 0  # the batch really exercises the cap


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(algos.ALGORITHMS))
def test_rollout_correction_with_identical_logprobs_is_a_no_op(name, mode):
    if name == "gmpo" and mode.startswith("token"):
        return
    lp, old, adv, mask = make_batch(2, n=6, length=8)
    corrected = loss_and_grad(
        name, lp, old, adv, mask, rollout_correction=mode, engine_logp=old.clone()
    )
    plain = loss_and_grad(name, lp, old, adv, mask)
    torch.testing.assert_close(corrected[0], plain[0], atol=1e-15, rtol=0)
    torch.testing.assert_close(corrected[1], plain[1], atol=1e-15, rtol=0)
    assert corrected[2]["rollout_weight_mean"] == 1.0
    assert corrected[2]["rollout_capped_frac"] == 0.0


def test_rollout_weights_by_hand():
    old = torch.tensor([[math.log(0.5), math.log(0.9), 0.0]], dtype=F64)
    engine = torch.tensor([[math.log(0.1), math.log(0.9), 5.0]], dtype=F64)
    mask = torch.tensor([[True, True, False]])
    w, capped = modifiers.rollout_weights(old, engine, mask, "token_truncate", 2.0)
    assert w[0, :2].tolist() == pytest.approx([2.0, 1.0]) and capped[0, :2].tolist() == [1, 0]
    w, _ = modifiers.rollout_weights(old, engine, mask, "token_mask", 2.0)
    assert w[0, :2].tolist() == pytest.approx([0.0, 1.0])
    w, capped = modifiers.rollout_weights(old, engine, mask, "sequence_truncate", 10.0)
    assert w.item() == pytest.approx(5.0) and not capped.any()  # padding never counts
    w, _ = modifiers.rollout_weights(old, engine, mask, "sequence_mask", 4.0)
    assert w.tolist() == [[0.0]]


# ----------------------------------------------------------------------------- MGPO variants


def test_top_count_equals_full_ranks():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        n, length = torch.randint(1, 9, (2,), generator=g).tolist()
        u = torch.randint(0, 4, (n, length), generator=g).double() / 2  # many ties
        mask = torch.rand(n, length, generator=g) < 0.7
        beta = torch.rand(1, generator=g).item()
        counts = selection_counts(mask.sum(1), beta)
        for x in (u, u.float()):
            expected = (token_ranks(x, mask) < counts[:, None]) & mask
            assert top_count(x, mask, counts).bool().tolist() == expected.tolist()


@pytest.mark.parametrize("alpha", [0.5, "dyn"])
def test_uncertainty_entropy_with_constant_entropy_selects_by_position(alpha):
    lp, old, adv, mask = make_batch(3, n=5, length=9)
    entropy = torch.full(lp.shape, 0.7, dtype=F64)
    a = algos.blend_weights(entropy, mask, alpha, 0.5)
    for i in range(lp.shape[0]):
        valid = ref_valid(mask, i)
        count = math.floor(0.5 * len(valid) + 1e-9)
        selected = [t for t in valid if a[i, t] > 0]
        assert selected == valid[:count]
    check_against_reference(
        "mgpo", {"uncertainty": "entropy", "entropy": entropy, "alpha": alpha}, lp, old, adv, mask
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha", [0.5, "dyn", 1.0])
def test_uncertainty_entropy_matches_reference(seed, alpha):
    lp, old, adv, mask = make_batch(seed, n=6, length=9)
    entropy, _ = side_tensors(seed, lp)
    params = {"uncertainty": "entropy", "entropy": entropy, "alpha": alpha, "beta": 0.6}
    check_against_reference("mgpo", params, lp, old, adv, mask)


def test_selection_paper_against_the_listing_and_how_it_differs():
    """Row 0 is short (2 tokens) in a padded width of 8: per_response selects floor(0.5*2) = 1
    of its tokens; the listing's k = int(0.5 * 8) = 4 is taken over the padded row, whose
    padding counts as 0, so both of its tokens are selected."""
    lp = torch.tensor(
        [[-0.1, -0.3] + [0.0] * 6, [-2.0, -0.5, -0.5, -1.0, -0.2, -3.0, -0.5, -0.4]], dtype=F64
    )
    mask = torch.tensor([[True, True] + [False] * 6, [True] * 8])
    paper = algos.blend_weights(-lp, mask, 1.0, 0.5, selection="paper")
    per_response = algos.blend_weights(-lp, mask, 1.0, 0.5)
    assert paper[0].tolist() == [1.0, 1.0] + [0.0] * 6
    assert per_response[0].tolist() == [0.0, 1.0] + [0.0] * 6
    # row 1: the 4th largest -logp is 0.5, tied three times: all five tokens >= 0.5 are selected
    assert paper[1].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert per_response[1].sum().item() == 4
    # int() truncates: beta 0.29 on a width of 100 gives k = 28, per_response's floor gives 29
    assert int(0.29 * 100) == 28 and selection_counts(torch.tensor([100.0]), 0.29).item() == 29


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    length=st.integers(1, 9),
    beta=st.floats(0.0, 1.0),
    extra_width=st.integers(0, 5),
    entropy=st.booleans(),
)
def test_selection_paper_property_matches_listing(seed, n, length, beta, extra_width, entropy):
    lp, old, adv, mask = make_batch(seed, n=n, length=length)
    params = {"selection": "paper", "beta": beta, "padded_width": length + extra_width}
    if entropy:
        params.update(uncertainty="entropy", entropy=side_tensors(seed, lp)[0])
    check_against_reference("mgpo", params, lp, old, adv, mask)


# ----------------------------------------------------------------------------- DHPO


def ref_dhpo_averaged(lp, old, adv, mask, eps_tok, eps_seq, zero):
    """DHPO's averaged mixing with branch-specific clipping, as its abstract describes it: the
    token and sequence ratios are each clipped in their own trust region, then mixed 50/50,
    inside one clipped surrogate; per-response token mean, mean over responses."""
    per_token = {}
    for i in range(lp.shape[0]):
        valid = ref_valid(mask, i)
        if not valid:
            continue
        s = torch.exp(sum(lp[i, t] - old[i, t] for t in valid) / len(valid))
        for t in valid:
            w = torch.exp(lp[i, t] - old[i, t])
            mixed = 0.5 * w + 0.5 * s
            mixed_clipped = 0.5 * ref_clip(w, *eps_tok) + 0.5 * ref_clip(s, *eps_seq)
            per_token[(i, t)] = min(mixed * adv[i], mixed_clipped * adv[i])
    return ref_seq_mean_loss(per_token, mask, lp.shape[0], zero)


@pytest.mark.parametrize("seed", range(4))
def test_dhpo_averaged_mixing_is_mgpo_with_alpha_half_and_beta_one(seed):
    """DHPO (arXiv:2601.05607) "averaged mixing with branch-specific clipping" is MGPO with
    alpha = 0.5 and beta = 1 (every token selected, so a_t = 0.5 everywhere) when both branches
    share one clip range; with different ranges per branch (e.g. GSPO's tiny one for the
    sequence branch) it is not, since MGPO clips both branches with the same eps."""
    lp, old, adv, mask = make_batch(seed, n=6, length=9)
    eps = (0.2, 0.28)
    leaf = lp.clone().requires_grad_(True)
    dhpo = ref_dhpo_averaged(leaf, old, adv, mask, eps, eps, leaf.sum() * 0)
    (dhpo_grad,) = torch.autograd.grad(dhpo, leaf)
    loss, grad, _ = loss_and_grad(
        "mgpo", lp, old, adv, mask, alpha=0.5, beta=1.0, eps_low=eps[0], eps_high=eps[1]
    )
    torch.testing.assert_close(loss, dhpo.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, dhpo_grad, atol=1e-12, rtol=1e-10)
    leaf = lp.clone().requires_grad_(True)
    branchy = ref_dhpo_averaged(leaf, old, adv, mask, eps, (3e-4, 4e-4), leaf.sum() * 0)
    assert abs(branchy.item() - loss.item()) > 1e-6
