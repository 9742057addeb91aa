"""prepare stage: turn a dataset (hub, local files, or built-in) into prompt shards."""

from stages.prepare.datasets import DATASETS, PrepareOptions
from stages.prepare.run import run_prepare
from stages.prepare.shapes import DIFFICULTIES

__all__ = ["DATASETS", "DIFFICULTIES", "PrepareOptions", "run_prepare"]
