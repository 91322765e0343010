"""tune/console.py: the search's known noise lines are dropped, every other line of the same loggers is kept."""

from __future__ import annotations

import logging

import pytest

from tune.console import quiet_known_noise

# (logger, a noise line it emits, a line of the same logger that must stay)
CASES = [
    ("mlflow.store.db.utils", "Creating initial MLflow database tables...", "could not connect"),
    ("mlflow.store.db.utils", "Updating database tables", "could not connect"),
    ("optuna.storages._in_memory", "A new study created in memory with name: optuna", "Trial 3 failed"),
    ("optuna.storages._rdb.storage", "A new study created in RDB with name: fk-1", "Trial 3 failed"),
    ("ray.tune.tune", "Experiment has been interrupted, but the most recent state was saved.\nResume experiment "
                      "with: Tuner.restore(path=\"/x\", trainable=...)",
     "Trial trainable_1 errored after 2 iterations."),
    ("mlflow.pyfunc", "Validating input example against model signature",
     "Encountered an unexpected error while validating the input example against model signature."),
    ("ray._private.authentication.authentication_token_setup",
     "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
     "Token authentication is disabled for this Ray cluster."),
    ("ray.tune.analysis.experiment_analysis",
     "Failed to fetch metrics for 1 trial(s):\n- trial_1: FileNotFoundError('/x/progress.csv')",
     "Failed to fetch metrics for 1 trial(s):\n- trial_1: ValueError('bad csv')"),
]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name, noise, kept", CASES, ids=[f"{c[0]}:{c[1][:20]}" for c in CASES])
def test_known_noise_is_dropped_and_the_rest_kept(monkeypatch, name, noise, kept):
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    logger = logging.getLogger(name)
    capture = _Capture()
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        quiet_known_noise(local_ray=True)
        quiet_known_noise(local_ray=True)  # idempotent: one filter per logger and line
        logger.warning(noise)
        logger.warning(kept)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    assert capture.messages == [kept]
    import os

    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_tunes_stop_signal_warning_is_one_line_in_the_searchs_words():
    """Issue 42 §7: on Ctrl-C Tune warned "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run. This
    will try to checkpoint the experiment state one last time. Press CTRL+C (or send SIGINT/SIGKILL/SIGTERM) to
    skip." It passed the filter; now it says, in one warning, what the search does (and other lines stay)."""
    logger = logging.getLogger("ray.tune.tune")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        quiet_known_noise()
        quiet_known_noise()  # idempotent
        logger.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run. This will try to "
                       "checkpoint the experiment state one last time. Press CTRL+C (or send SIGINT/SIGKILL/SIGTERM) "
                       "to skip. ")
        logger.warning("Trial %s errored.", "t_1")
    finally:
        logger.removeHandler(capture)
    assert capture.messages == ["Ctrl-C: stopping the search; its state is saved for --resume (Ctrl-C again skips "
                                "the last save)", "Trial t_1 errored."]


def test_joining_a_cluster_keeps_rays_token_auth_notice():
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    saved = list(logger.filters)
    logger.filters.clear()
    try:
        quiet_known_noise(local_ray=False)
        record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                                   "Token authentication is enabled for this Ray cluster.", (), None)
        assert logger.filter(record)
    finally:
        logger.filters[:] = saved
