"""Imported once by the scoring workers' forkserver: loads and warms up the math scorer.

math-verify builds its LaTeX parser and imports parts of SymPy on the first comparison (about a
quarter of a second). Doing it here, in the server that every worker is forked from, means no
worker pays it on its first item, including the replacement of a worker killed on a time limit.
"""

from stages.score.math_reward import math_reward

math_reward("<think>warm up</think> \\boxed{\\frac{2\\sqrt{3}}{4}}", "0.87")
