"""train stage: the on-policy loop (rollout -> score -> update), configured by a recipe.

Public: ``run_train(TrainConfig)`` and the config it takes; the losses live in ``algos``, and
``algorithm_catalog()`` lists them (name, options, paper, formula); the memory plan
(``plan_memory``, ``plan_hardware``, ``plan_table``; see ``memory_plan`` and ``plan_fit``) says
before anything is loaded whether a recipe fits its GPUs.
"""

from stages.train.algos import catalog as algorithm_catalog
from stages.train.config import TrainConfig
from stages.train.loop import run_train
from stages.train.memory_plan import MemoryPlan, plan_memory
from stages.train.plan_fit import plan_hardware
from stages.train.plan_text import human_bytes, plan_table

__all__ = [
    "MemoryPlan",
    "TrainConfig",
    "algorithm_catalog",
    "human_bytes",
    "plan_hardware",
    "plan_memory",
    "plan_table",
    "run_train",
]
