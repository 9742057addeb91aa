"""train stage: the on-policy loop (rollout -> score -> update), configured by a recipe.

Public: ``run_train(TrainConfig)`` and the config it takes; the losses live in ``algos``, and
``algorithm_catalog()`` lists them (name, options, paper, formula).
"""

from stages.train.algos import catalog as algorithm_catalog
from stages.train.config import TrainConfig
from stages.train.loop import run_train

__all__ = ["TrainConfig", "algorithm_catalog", "run_train"]
