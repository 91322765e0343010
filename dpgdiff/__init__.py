"""dpgdiff: DPG-Diff and its baselines for cross-domain sequential recommendation (plain PyTorch)."""

from dpgdiff.config import Config, ConfigError
# Bound directly (not lazily): `dpgdiff.train` must be the function, and the name would otherwise be
# taken by the submodule dpgdiff/train.py as soon as anything imports it. Use
# importlib.import_module("dpgdiff.train") when the module itself is needed.
from dpgdiff.train import TrainingDivergedError, TrainResult, train

__all__ = ["Config", "ConfigError", "TrainResult", "TrainingDivergedError", "train"]
__version__ = "0.1.0"
