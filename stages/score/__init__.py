"""score stage: rewards for rollouts, each item under a hard time limit.

- ``extract``: ``last_boxed``, ``has_think_format`` (pure string functions)
- ``math_reward``: the built-in ``math`` reward (math-verify accuracy + think/box format)
- ``rewards``: the registry of built-in rewards and loading ``FILE.py:FN`` custom ones
- ``runner``: ``score_items`` (K worker processes, per-item time limit) and ``summarize``
"""

from stages.score.runner import score_items, summarize

__all__ = ["score_items", "summarize"]
