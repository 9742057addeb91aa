"""rollout stage: prompt shards + a policy -> sampled responses with behaviour log-probs.

Public: ``run_rollout(RolloutOptions(...))`` (the entry function), and the engines a caller may
keep alive across calls (``make_engine``, ``BACKENDS``, ``HFEngine``), as ``mgpo train`` does.
"""

from stages.rollout.backends import BACKENDS, make_engine
from stages.rollout.engine_api import Engine, Sample
from stages.rollout.engine_hf import HFEngine
from stages.rollout.run import RolloutOptions, run_rollout

__all__ = [
    "BACKENDS",
    "Engine",
    "HFEngine",
    "RolloutOptions",
    "Sample",
    "make_engine",
    "run_rollout",
]
