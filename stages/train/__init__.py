"""train stage: the on-policy loop (rollout -> score -> update), configured by a recipe.

Public: ``run_train(TrainConfig)`` and the config it takes; the losses live in ``algos``.
"""

from stages.train.config import TrainConfig
from stages.train.loop import run_train

__all__ = ["TrainConfig", "run_train"]
