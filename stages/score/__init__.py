"""score stage: rewards for rollouts, each item under a hard time limit.

- ``extract``: ``last_boxed``, ``has_think_format`` (pure string functions)
- ``math_reward``: the built-in ``math`` reward (math-verify accuracy + think/box format)
- ``rewards``: the registry of built-in rewards and loading ``FILE.py:FN`` custom ones
- ``runner``: ``score_items`` (K worker processes, per-item time limit) and ``summarize``
- ``run``: the entry function ``run_score(ScoreOptions(...))``; ``score_pool`` keeps workers

Public (what other stages use): the entry function and its worker pool, and the answer rules
(``last_boxed``, ``last_number_reward``, ``same_number``, ``answers_match``, ``is_correct``,
``shown_choices``, ``short_answer_reward``) that ``eval`` shares so benchmarks judge answers
exactly as the training reward does.
"""

from stages.score.extract import last_boxed
from stages.score.last_number import last_number_reward, same_number
from stages.score.math_reward import answers_match, is_correct, shown_choices
from stages.score.run import ScoreOptions, run_score, score_pool
from stages.score.runner import ScorePool, score_items, summarize
from stages.score.short_answer import short_answer_reward

__all__ = [
    "ScoreOptions",
    "ScorePool",
    "answers_match",
    "is_correct",
    "last_boxed",
    "last_number_reward",
    "run_score",
    "same_number",
    "score_items",
    "score_pool",
    "short_answer_reward",
    "shown_choices",
    "summarize",
]
