"""What each registered loss is: its paper and its formula in one line (for ``mgpo train
--list-algos`` and the README table, which a test keeps equal to this).

Notation: response i of N has n_i valid tokens, T = sum_i n_i; w_t = pi(o_t) / pi_old(o_t),
s_i = exp(mean_t log w_t); clip(x) = clamp(x, 1 - eps_low, 1 + eps_high); sg = stop-gradient.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class About:
    paper: str
    formula: str


ABOUT: dict[str, About] = {
    "grpo": About(
        "DeepSeekMath (Shao et al. 2024), arXiv:2402.03300",
        "-(1/N) Σ_i (1/n_i) Σ_t min(w_t A_i, clip(w_t) A_i)",
    ),
    "gspo": About(
        "GSPO (Zheng et al. 2025), arXiv:2507.18071",
        "-(1/N) Σ_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log w_t)",
    ),
    "mgpo": About(
        "MGPO: Multi-Grained Policy Optimization for Multimodal Reasoning (ICLR 2026 submission)",
        "-(1/N) Σ_i (1/n_i) Σ_t min(m_t A_i, mclip_t A_i), m_t = a_t w_t + (1-a_t) s_i",
    ),
    "dapo": About(
        "DAPO (Yu et al. 2025), arXiv:2503.14476",
        "-(1/T) Σ_{i,t} min(w_t A_i, clip(w_t) A_i), eps_high 0.28",
    ),
    "dr_grpo": About(
        "Dr.GRPO (Liu et al. 2025), arXiv:2503.20783",
        "-Σ_{i,t} min(w_t A_i, clip(w_t) A_i) / (N · L_max), A_i = R_i - mean_g R",
    ),
    "gpg": About(
        "GPG (Chu et al. 2025), arXiv:2504.02546",
        "-(alpha_age/T) Σ_{i,t} log π(o_t) A_i, A_i = R_i - mean_g R",
    ),
    "sapo": About(
        "SAPO (Gao et al. 2025), arXiv:2511.20347",
        "-(1/N) Σ_i (1/n_i) Σ_t (4/τ) σ(τ (w_t - 1)) A_i, τ = τ_pos if A_i > 0 else τ_neg",
    ),
    "cispo": About(
        "CISPO, MiniMax-M1 (2025), arXiv:2506.13585",
        "-(1/T) Σ_{i,t} sg(clip(w_t)) A_i log π(o_t)",
    ),
    "gmpo": About(
        "GMPO (Zhao et al. 2025), arXiv:2507.20673",
        "-(1/N) Σ_i exp(mean_t sgn(A_i) min(sgn(A_i) log w_t, sgn(A_i) clamp(log w_t, -eps_low, eps_high))) A_i",
    ),
}

NORMALISERS = frozenset({"num_seqs", "num_tokens", "max_len", "padded_width", "entropy_threshold"})
"""Counts the trainer passes for every micro-batch so micro-batches add up: global normalisers,
the paper listing's padded width, the step's entropy threshold (None: this call's own)."""
TRAINER_OPTIONS = NORMALISERS | {"alpha_age"}
"""Options the trainer fills in (GPG's ``alpha_age`` from the rewards); users set the others."""
