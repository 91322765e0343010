"""Hyperparameter search for dpgdiff: Ray Tune + Optuna + MLflow (kept out of the dpgdiff package)."""
