"""rollout stage: prompt shards + a policy -> sampled responses with behaviour log-probs."""

from stages.rollout.run import RolloutOptions, run_rollout

__all__ = ["RolloutOptions", "run_rollout"]
