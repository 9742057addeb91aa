"""The policy losses, one pure function each; :mod:`stages.train.algos` registers them by name.

- ``shared``: input checks, ratios, the clipped surrogate, aggregations, metrics
- ``clipped``: GRPO, GSPO, DAPO, Dr.GRPO
- ``mgpo``: MGPO's token ranking, selection and blend weights, and its loss
- ``gpg``: GPG
"""
