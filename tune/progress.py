"""The trial table printed while a search runs, with the elapsed time and an estimate of the time left."""

from __future__ import annotations

import statistics
import time
from typing import Any, Iterable, Optional

from ray import tune

FINISHED = ("TERMINATED", "ERROR")


def estimate_seconds_left(trials: Iterable[tuple[str, int, float]], max_epochs: int, num_samples: int,
                          concurrency: int) -> Optional[float]:
    """Upper-bound estimate of the search's remaining wall time, or None before any epoch has been timed.

    trials: (status, epochs done, seconds trained) per trial Tune knows. Every unfinished trial is assumed
    to run to `max_epochs` (ASHA can only shorten that), trials not created yet likewise, at the median
    seconds per epoch seen so far, `concurrency` at a time."""
    trials = list(trials)
    per_epoch = [seconds / epochs for _, epochs, seconds in trials if epochs >= 1 and seconds > 0]
    if not per_epoch:
        return None
    left = sum(max(0, max_epochs - epochs) for status, epochs, _ in trials if status not in FINISHED)
    left += max(0, num_samples - len(trials)) * max_epochs
    return left * statistics.median(per_epoch) / max(1, concurrency)


def _clock(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


class ProgressReporter(tune.CLIReporter):
    """Ray Tune's CLIReporter plus one line: elapsed time and, once epochs have been timed, the time left."""

    def __init__(self, *, max_epochs: int, num_samples: int, early_stopping: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_args = dict(max_epochs=max_epochs, num_samples=num_samples, early_stopping=early_stopping, **kwargs)
        self._max_epochs, self._num_samples = max_epochs, num_samples
        self._caveat = "; ASHA shortens it" if early_stopping else ""
        self._concurrency = 1  # the most trials seen running at once: what the cluster fits
        self._start = time.time()

    # A resumed search unpickles this reporter from tuner.pkl, written by the driver that was interrupted,
    # perhaps by an older version of this class. So only the constructor's arguments are pickled, and a
    # restored reporter is built afresh: new fields exist, and the elapsed time counts from this driver's
    # start (not the interrupted one's, which would add the time the search was not running).
    def __getstate__(self) -> dict[str, Any]:
        return {"init_args": self._init_args} if self._init_args is not None else self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "init_args" in state:
            self.__init__(**state["init_args"])
            return
        # pickled whole by a version without __getstate__: keep its fields, add those it lacks
        self.__dict__.update(state)
        self.__dict__.setdefault("_caveat", "; ASHA shortens it")
        self._init_args, self._start = None, time.time()

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        super().report(trials, done, *sys_info)
        self._concurrency = max(self._concurrency, sum(t.status == "RUNNING" for t in trials))
        rows = [(t.status, int((t.last_result or {}).get("epoch", 0) or 0),
                 float((t.last_result or {}).get("time_total_s", 0.0) or 0.0)) for t in trials]
        left = estimate_seconds_left(rows, self._max_epochs, self._num_samples, self._concurrency)
        estimate = ("time left: estimated once the first epoch is timed" if left is None
                    else f"time left: at most about {_clock(left)} (every trial to the last epoch{self._caveat})")
        print(f"elapsed {_clock(time.time() - self._start)}; {estimate}", flush=True)
