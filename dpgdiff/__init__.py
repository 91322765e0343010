"""dpgdiff: DPG-Diff and its baselines for cross-domain sequential recommendation (plain PyTorch)."""

from dpgdiff.config import Config, ConfigError

__all__ = ["Config", "ConfigError"]
__version__ = "0.1.0"
