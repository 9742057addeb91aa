"""Per-micro-batch loss metrics combine into what the loss reports on the whole batch."""

from __future__ import annotations

import math

import pytest
import torch

from stages.train import algos, loss_metrics
from stages.train.losses import modifiers

NORMALISERS = ("num_seqs", "num_tokens", "max_len")


def random_batch(seed: int, rows: int = 10, width: int = 7):
    """Ragged responses (1..width tokens, padding on the right), mixed-sign advantages."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(rows, width, generator=gen) * 3
    old = logp + 0.3 * torch.randn(rows, width, generator=gen)
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    advantages = torch.randn(rows, generator=gen)
    entropy = torch.rand(rows, width, generator=gen) * 5
    return logp, old, advantages, mask, entropy


def engine_logp(batch) -> torch.Tensor:
    """Behaviour log-probs of a rollout engine that disagrees a little with the trainer."""
    gen = torch.Generator().manual_seed(99)
    return batch[1] + 0.3 * torch.randn(batch[1].shape, generator=gen)


def global_normalisers(name: str, mask: torch.Tensor, extra: dict | None = None) -> dict:
    """The whole batch's counts, as the trainer passes them to every micro-batch: under the
    high-entropy mask, the step's threshold and its kept tokens."""
    extra = extra or {}
    kept = mask
    if extra.get("entropy_top") is not None:
        entropy = extra["_entropy"]
        threshold = modifiers.entropy_threshold(entropy, mask, extra["entropy_top"])
        kept = modifiers.keep_high_entropy(entropy, mask, threshold)
    lengths = mask.sum(1)
    counts = {
        "num_seqs": float(mask.shape[0]),
        "num_tokens": float(kept.sum()),
        "max_len": float(lengths.max()),
    }
    if extra.get("entropy_top") is not None:
        counts["entropy_threshold"] = threshold
    return {k: v for k, v in counts.items() if k in algos.options(name)}


def chunk_metrics(name, batch, rows, normalisers, extra):
    logp, old, advantages, mask, entropy = batch
    tensors = {}
    if extra.get("rollout_correction", "none") != "none":
        tensors["engine_logp"] = engine_logp(batch)[rows]
    _, metrics = algos.compute_loss(
        name,
        logp[rows],
        old[rows],
        advantages[rows],
        mask[rows],
        entropy=entropy[rows],
        **normalisers,
        **{k: v for k, v in extra.items() if not k.startswith("_")},
        **tensors,
    )
    return metrics


CASES = [(name, {}) for name in sorted(algos.ALGORITHMS)] + [
    ("mgpo", {"alpha": "dyn", "beta": 0.5}),
    ("mgpo", {"clip_ratio_c": 1.5, "uncertainty": "entropy"}),
    ("grpo", {"entropy_top": 0.3}),
    ("dapo", {"entropy_top": 0.5, "rollout_correction": "token_mask"}),
    ("cispo", {"entropy_top": 0.2}),
    ("gpg", {"entropy_top": 0.6}),
    ("sapo", {"rollout_correction": "token_truncate", "rollout_correction_max": 1.2}),
    ("gmpo", {"rollout_correction": "sequence_mask"}),
    ("gspo", {"rollout_correction": "sequence_truncate", "clip_ratio_c": 2.0}),
    ("dr_grpo", {"clip_ratio_c": 1.2}),
]


@pytest.mark.parametrize("name,extra", CASES)
def test_micro_batches_combine_into_the_whole_batch_metrics(name: str, extra: dict) -> None:
    batch = random_batch(seed=len(name) + len(extra))
    mask = batch[3]
    extra = {**extra, "_entropy": batch[4]}
    normalisers = global_normalisers(name, mask, extra)
    whole = chunk_metrics(name, batch, slice(None), normalisers, extra)
    # uneven micro-batches, plus a masked-off placeholder (what an idle process runs)
    chunks = [
        chunk_metrics(name, batch, slice(a, b), normalisers, extra)
        for a, b in [(0, 3), (3, 6), (6, 10)]
    ]
    logp, old, advantages, _, entropy = batch
    masked_off = (logp, old, advantages, torch.zeros_like(mask), entropy)
    placeholder = chunk_metrics(name, masked_off, slice(0, 2), normalisers, extra)
    keys, sums, extremes = loss_metrics.local_totals([*chunks, placeholder])
    combined = loss_metrics.finish_totals(keys, sums, extremes, optimizer_steps=1)
    assert combined.keys() == whole.keys()
    for key, value in whole.items():
        assert combined[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert combined.get("tokens_valid", combined["tokens"]) == float(mask.sum())


@pytest.mark.parametrize(
    "name,extra",
    [("grpo", {}), ("dapo", {"entropy_top": 0.4, "rollout_correction": "token_truncate"})],
)
def test_processes_add_their_totals_and_take_the_extremes(name: str, extra: dict) -> None:
    """Two processes' totals, added and maxed as the trainer's all-reduce/gather does, give
    what one process holding every micro-batch gives (and, with the step's entropy threshold,
    what one call on the whole batch gives)."""
    batch = random_batch(seed=3)
    extra = {**extra, "_entropy": batch[4]}
    normalisers = global_normalisers(name, batch[3], extra)
    chunks = [
        chunk_metrics(name, batch, slice(a, a + 2), normalisers, extra) for a in range(0, 10, 2)
    ]
    one = loss_metrics.finish_totals(*loss_metrics.local_totals(chunks), optimizer_steps=1)
    first = loss_metrics.local_totals(chunks[0::2])
    second = loss_metrics.local_totals(chunks[1::2])
    assert first[0] == second[0]
    sums = [a + b for a, b in zip(first[1], second[1], strict=True)]
    extremes = [max(a, b) for a, b in zip(first[2], second[2], strict=True)]
    two = loss_metrics.finish_totals(first[0], sums, extremes, optimizer_steps=1)
    assert two == pytest.approx(one)
    whole = chunk_metrics(name, batch, slice(None), normalisers, extra)
    assert two == pytest.approx(whole, rel=1e-5, abs=1e-6)


def test_losses_are_averaged_over_optimizer_steps_and_token_means_over_tokens() -> None:
    """Plain formula: two mini-batches -> loss is the mean of their two losses; entropy is the
    mean over every valid token of the step."""
    name = "grpo"
    logp, old, advantages, mask, entropy = random_batch(seed=5)
    minis = [slice(0, 4), slice(4, 10)]
    chunks, losses = [], []
    for mini in minis:
        normalisers = global_normalisers(name, mask[mini])
        metrics = chunk_metrics(name, (logp, old, advantages, mask, entropy), mini, normalisers, {})
        chunks.append(metrics)
        losses.append(metrics["loss"])
    row = loss_metrics.finish_totals(*loss_metrics.local_totals(chunks), optimizer_steps=2)
    assert row["loss"] == pytest.approx(sum(losses) / 2)
    token_entropy = [float(entropy[r, t]) for r in range(10) for t in range(7) if mask[r, t]]
    assert row["entropy"] == pytest.approx(sum(token_entropy) / len(token_entropy), rel=1e-6)
    assert row["ratio_spread"] == pytest.approx(row["ratio_max"] - row["ratio_min"])


def test_no_valid_token_anywhere_gives_zeros_not_nans() -> None:
    name = "gspo"
    logp, old, advantages, mask, entropy = random_batch(seed=7, rows=3)
    _, metrics = algos.compute_loss(
        name, logp, old, advantages, torch.zeros_like(mask), entropy=entropy, num_seqs=3.0
    )
    row = loss_metrics.finish_totals(*loss_metrics.local_totals([metrics]), optimizer_steps=1)
    assert all(math.isfinite(v) for v in row.values())
    assert row["tokens"] == 0.0 and row["ratio_spread"] == 0.0
    assert loss_metrics.finish_totals(*loss_metrics.local_totals([]), optimizer_steps=1) == {}
