"""dpgdiff: DPG-Diff and its baselines for cross-domain sequential recommendation (plain PyTorch)."""

from dpgdiff.config import Config, ConfigError
from dpgdiff.training import TrainingDivergedError, TrainResult, train

__all__ = ["Config", "ConfigError", "TrainResult", "TrainingDivergedError", "train"]
__version__ = "0.1.0"
