"""The mgpo pipeline library.

Its base, which every stage builds on: ``errors`` and ``console`` (one-line user errors, progress
bars), ``config`` (recipes -> frozen dataclasses), ``schemas`` and ``shards`` (the Parquet shard
contract), ``sources`` and ``images`` (reading local data), ``prompt_templates`` and ``models``
(loading policies, encoding prompts). Then one sub-package per stage, each with one entry
function: ``prepare`` -> ``rollout`` -> ``score`` -> ``train`` -> ``eval``, and ``report``.

Imports run one way: ``mgpo_cli`` (the command line) -> a stage -> the base. A stage uses another
stage only through what that stage's package exports (``from stages.rollout import run_rollout``).
"""

__version__ = "0.1.0"
