"""How the loss functions' per-micro-batch metrics combine into one row per training step.

Each loss call reports on its own micro-batch: sums that already carry the mini-batch's global
normaliser (``loss``, ``pg_loss``), its valid-token count (``tokens``), extremes (``ratio_max``,
``ratio_min``) and token means (everything else: entropy, kl, clip fractions, ratio_mean,
blend_frac, alpha_mean). A step runs many micro-batches, on one or several processes. Averaging
them as they come would weight a half-empty micro-batch like a full one, scale the summed loss
down by the number of micro-batches, and on several processes report only the first one's share.
Instead each process reduces its micro-batches to a vector of sums (``local_totals``), the
processes add those vectors and take the extremes' max, and ``finish_totals`` makes the row:

- summed keys: total over the step / optimizer steps (the mean mini-batch loss), except
  ``tokens``, the valid tokens trained in the step (under the high-entropy mask: the kept
  ones), and ``tokens_valid``, every valid token (reported only with that mask);
- token means: weighted by each micro-batch's ``tokens``, so the result is the mean over every
  token of the step the loss trained on, whatever the micro-batch split; the keys in
  ``OVER_VALID`` (entropy and the mask's own statistics) are means over every valid token,
  weighted by ``tokens_valid`` when the mask reports it;
- extremes: over micro-batches with at least one valid token; ``ratio_spread`` = max - min.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

PER_OPTIMIZER_STEP = ("loss", "pg_loss")
"""Keys that are sums with the mini-batch normaliser built in: add up, divide by steps."""
COUNTS = ("tokens", "tokens_valid")
"""Keys that are counts: they add up."""
OVER_VALID = ("entropy", "entropy_kept_frac", "entropy_threshold")
"""Token means over every valid token: weighted by ``tokens_valid`` where a chunk has it."""
LARGEST, SMALLEST = "ratio_max", "ratio_min"
DERIVED = ("ratio_spread",)


def _weight_key(key: str, chunk: Mapping[str, float]) -> str:
    return "tokens_valid" if key in OVER_VALID and "tokens_valid" in chunk else "tokens"


def local_totals(
    chunks: Sequence[Mapping[str, float]],
) -> tuple[list[str], list[float], list[float]]:
    """This process's micro-batch metrics as (keys, additive sums, extremes).

    ``sums`` holds, per key: the plain sum for summed keys and ``tokens``, the token-weighted sum
    for token means. ``extremes`` is ``[max of ratio_max, -(min of ratio_min)]`` over
    micro-batches with valid tokens (``-inf`` where none), so both combine across processes with
    one max. Keys come sorted, and every process of a run has the same keys.
    """
    if not chunks:
        return [], [], []
    keys = sorted(k for k in chunks[0] if k not in (LARGEST, SMALLEST, *DERIVED))
    sums = []
    for key in keys:
        if key in PER_OPTIMIZER_STEP or key in COUNTS:
            sums.append(sum(float(c[key]) for c in chunks))
        else:
            sums.append(sum(float(c[key]) * float(c[_weight_key(key, c)]) for c in chunks))
    if LARGEST not in chunks[0] or SMALLEST not in chunks[0]:
        return keys, sums, []
    valid = [c for c in chunks if c["tokens"] > 0]
    extremes = [
        max((c[LARGEST] for c in valid), default=-math.inf),
        -min((c[SMALLEST] for c in valid), default=math.inf),
    ]
    return keys, sums, extremes


def finish_totals(
    keys: Sequence[str],
    sums: Sequence[float],
    extremes: Sequence[float],
    optimizer_steps: int,
) -> dict[str, float]:
    """Finish the (all-process) totals of ``local_totals`` into one metrics row."""
    if not keys:
        return {}
    totals = dict(zip(keys, sums, strict=True))
    out = {}
    for key, total in totals.items():
        if key in PER_OPTIMIZER_STEP:
            out[key] = total / max(optimizer_steps, 1)
        elif key in COUNTS:
            out[key] = total
        else:
            weight = totals[_weight_key(key, totals)]
            out[key] = total / weight if weight > 0 else 0.0
    if extremes:
        largest, smallest = extremes[0], -extremes[1]
        if math.isfinite(largest) and math.isfinite(smallest):
            out[LARGEST], out[SMALLEST] = largest, smallest
            out["ratio_spread"] = largest - smallest
        else:  # no valid token anywhere: the loss functions' own convention
            out[LARGEST] = out[SMALLEST] = out["ratio_spread"] = 0.0
    return out
