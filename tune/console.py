"""Keep a search's console for what the user needs: drop known log lines that say nothing actionable.

`quiet_known_noise()` (tune/search.py, tune/confirm.py, before Ray, MLflow or Optuna log anything) adds
one logging filter per logger that emits such a line, matched on the line's start, so that every other
record of those loggers still shows:

- Ray's "Token authentication is enabled for this Ray cluster" (local Ray only: tune/ray_internals.py
  binds it to 127.0.0.1; joining a cluster keeps it);
- MLflow's "Creating initial MLflow database tables..." and "Updating database tables" (a new local store);
- Optuna's "A new study created in memory/RDB with name: ..." (one per search: the searcher's study);
- MLflow's "Validating input example against model signature" (the registered model's example, tune/serving.py;
  a failed validation still warns);
- on Ctrl-C, Ray Tune's own resume hint ("Resume experiment with: Tuner.restore(path=..., trainable=...)";
  the project prints its `--resume` command instead), its "Trials did not complete" list (the search's
  summary counts the interrupted trials), and "Failed to fetch metrics ... FileNotFoundError" for trials
  that never wrote a result. Tune's "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run. This
  will try to checkpoint ..." warning is reworded (`REWORDED`): one line that the search is stopping, its state
  kept for --resume (what the search's own end then says in full).

MLflow's "Downloading artifacts" progress bars are turned off by its own switch
(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false), set by the commands unless the user set it.
"""

from __future__ import annotations

import logging
import os

from tune.ray_internals import RAY_AUTH_LOGGER  # a private Ray name (importing it does not import Ray)

# logger name -> the starts of the messages dropped from it
NOISE: dict[str, tuple[str, ...]] = {
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database tables"),
    "optuna.storages._in_memory": ("A new study created in memory",),
    "optuna.storages._rdb.storage": ("A new study created in RDB",),  # the search's persistent study (tune/study.py)
    "ray.tune.tune": ("Experiment has been interrupted, but the most recent state was saved",
                      "Trials did not complete"),
    "mlflow.pyfunc": ("Validating input example against model signature",),
}
# logger name -> {the start of a message: what it says instead}
REWORDED: dict[str, dict[str, str]] = {
    "ray.tune.tune": {"Stop signal received": "Ctrl-C: stopping the search; its state is saved for --resume "
                                              "(Ctrl-C again skips the last save)"},
}
FETCH_LOGGER = "ray.tune.analysis.experiment_analysis"


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with one of `starts` (or for which `also(message)` is true)."""

    def __init__(self, starts: tuple[str, ...], also=None) -> None:
        super().__init__()
        self.starts, self.also = starts, also

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  a malformed record is not ours to judge
            return True
        return not (message.startswith(self.starts) or (self.also is not None and self.also(message)))


class _Reword(logging.Filter):
    """Replaces a record whose message starts with a key of `texts` by that key's text (a warning stays one)."""

    def __init__(self, texts: dict[str, str]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            for start, text in self.texts.items():
                if record.msg.startswith(start):
                    record.msg, record.args = text, ()
        return True


def _missing_result_file(message: str) -> bool:
    """Tune's warning for trials whose result file does not exist (they never reported): nothing to fetch."""
    return message.startswith("Failed to fetch metrics") and all(
        "FileNotFoundError" in line for line in message.splitlines()[1:] if line.strip())


def quiet_known_noise(local_ray: bool = True) -> None:
    """Install the filters (idempotent); `local_ray`: also drop Ray's token-auth notice."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    noise = dict(NOISE)
    if local_ray:
        noise[RAY_AUTH_LOGGER] = ("Token authentication is enabled for this Ray cluster",)
    for name, starts in noise.items():
        _install(logging.getLogger(name), _DropMessages(starts))
    _install(logging.getLogger(FETCH_LOGGER), _DropMessages((), also=_missing_result_file))
    for name, texts in REWORDED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Reword) and f.texts == texts for f in logger.filters):
            logger.addFilter(_Reword(texts))


def _install(logger: logging.Logger, flt: _DropMessages) -> None:
    if not any(isinstance(f, _DropMessages) and f.starts == flt.starts and f.also is flt.also
               for f in logger.filters):
        logger.addFilter(flt)
