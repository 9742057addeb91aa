"""The policy losses, one pure function each; :mod:`stages.train.algos` registers them by name.

- ``shared``: input checks, ratios, the clipped surrogate (with dual-clip), aggregations, metrics
- ``clipped``: GRPO, GSPO, DAPO, Dr.GRPO
- ``mgpo``: MGPO's blend weights and its loss; ``selection``: which tokens it blends
- ``gpg``, ``sapo``, ``cispo``, ``gmpo``: one loss each
- ``modifiers``: options every loss shares (high-entropy mask, rollout/trainer correction)
- ``catalog``: each loss's paper and formula
"""
