"""`--time-budget`: a search that ends when its time is up, with what it found so far.

    python tune/search.py --dataset food_kitchen --time-budget 45m

The budget counts this driver's time from the start of its command (RunOptions.started) plus the time every
earlier driver of the search spent in Tune (a resumed search continues the count: tune/settings.py's
DRIVERS_FILE records each driver's time; an earlier driver's start-up, before Tune, is not in it).
When it is spent, `BudgetStopper` has Tune stop: no new trial starts, and the trials still running stop
with their checkpoints (the best two by validation, tune.CheckpointConfig), so that they can be selected
like any finished trial. They are TERMINATED in Tune, FINISHED in MLflow with the tag
`dpgdiff.stopped_by=time_budget` (never FAILED, never "stopped early by ASHA"), and a trial that had not
started counts as "not started (time budget)". Then the search selects, tests and registers its best trial,
which takes the margin (`margin_s`) printed when the search starts: the search ends within budget + margin.

Without --num-samples, a budgeted search has no trial count (UNTIL_BUDGET, Tune's num_samples=-1): trials start
until the budget is spent, and the budget ending it is its normal, complete end.

Once the first epoch has been timed, `BudgetCallback` prints how many trials of how many epochs fit in
what is left, and the progress line (tune/progress.py) shows the budget left.

The stopper is pickled into Tune's tuner.pkl and unpickled by a resume, so it keeps no clock of its own:
it asks this process's `BudgetClock` (set by the driver with `start_clock`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from ray import tune

from tune.names import TUNE_ENDED

UNTIL_BUDGET = -1  # num_samples of a search with --time-budget and no --num-samples: trials start until it is spent


def margin_s(budget_s: float) -> float:
    """What the search may take after its budget: stopping the trials in flight, selecting, testing the selected
    trial on the test set, attaching artifacts and registering its model. 60 s for those fixed steps (about
    20 s for tests/test_budget.py's synthetic search on 2 loaded cores) plus 5% of the budget for a test pass
    that grows with the data and the models a longer budget trains, at most 10 minutes in all."""
    return min(600.0, 60.0 + 0.05 * budget_s)


def clock_text(seconds: float) -> str:
    minutes, sec = divmod(int(round(max(0.0, seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


@dataclass
class BudgetClock:
    """This driver's view of the budget: `spent_before` seconds by earlier drivers, and this one's start."""

    budget_s: float
    spent_before: float
    started: float  # time.time() when this driver started
    stopping: bool = False  # the budget is spent: Tune is stopping the search (BudgetCallback decides when)
    stopped_ids: frozenset = frozenset()  # the trials that were live (not TERMINATED/ERROR) when it was spent

    def elapsed(self, now: Optional[float] = None) -> float:
        """The search's time so far, earlier drivers included."""
        return self.spent_before + ((now or time.time()) - self.started)

    def left(self, now: Optional[float] = None) -> float:
        return self.budget_s - self.elapsed(now)

    def expired(self, now: Optional[float] = None) -> bool:
        return self.left(now) <= 0


_CLOCK: Optional[BudgetClock] = None  # this process's search (one search per driver process)


def start_clock(budget_s: Optional[float], spent_before: float, started: float) -> Optional[BudgetClock]:
    """Set (or, without a budget, clear) this process's budget clock -> it."""
    global _CLOCK
    _CLOCK = BudgetClock(budget_s, spent_before, started) if budget_s else None
    return _CLOCK


def active_clock() -> Optional[BudgetClock]:
    return _CLOCK


def stopped_by_budget(trial_id: str) -> bool:
    """Whether the budget stopped this trial (it was live when the budget was spent), in this driver."""
    clock = _CLOCK
    return clock is not None and clock.stopping and trial_id in clock.stopped_ids


def budget_ended() -> bool:
    """Whether this driver's search ended because its budget was spent."""
    return _CLOCK is not None and _CLOCK.stopping


def progress_note() -> str:
    """"; time budget left M:SS" for the progress line (empty without a budget)."""
    clock = _CLOCK
    if clock is None:
        return ""
    left = clock.left()
    return f"; time budget: {clock_text(left)} left" if left > 0 else "; time budget spent: stopping"


class BudgetStopper(tune.Stopper):
    """Stops the whole experiment once BudgetCallback has found the budget spent (no clock: never). Tune then
    starts no new trial and stops the live ones at once (TERMINATED, their checkpoints kept), without its
    per-trial completion hooks: tune/tracking.py and tune/driver.py record them as stopped by the budget."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # no single trial is stopped for its own sake; stop_all ends them together

    def stop_all(self) -> bool:
        return budget_ended()


class BudgetCallback(tune.Callback):
    """Once the first epoch has been timed: how many trials of how many epochs fit in the budget left."""

    def __init__(self, epochs: int, num_samples: int, concurrency: int) -> None:
        self.epochs, self.num_samples, self.concurrency = epochs, num_samples, max(1, concurrency)
        self._said = False

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: a resume says it again
        return {"epochs": self.epochs, "num_samples": self.num_samples, "concurrency": self.concurrency}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """At the start of Tune's step in which the budget is found spent: which trials are live, then stop."""
        clock = _CLOCK
        if clock is None or clock.stopping or not clock.expired():
            return
        live = frozenset(t.trial_id for t in trials if t.status not in TUNE_ENDED)
        clock.stopped_ids, clock.stopping = live, True
        print(f"\ntime budget {clock_text(clock.budget_s)} spent: no new trial starts; stopping {len(live)} live "
              "trial(s), each keeping its checkpoints", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        clock = _CLOCK
        seconds = result.get("time_this_iter_s")
        if self._said or clock is None or result.get("final") or not seconds:
            return
        self._said = True
        print(fit_message(float(seconds), clock.left(), self.epochs, self.num_samples, self.concurrency), flush=True)


def fit_message(epoch_s: float, left_s: float, epochs: int, num_samples: int, concurrency: int) -> str:
    """What fits in `left_s` at `epoch_s` per epoch, `concurrency` trials at once (num_samples UNTIL_BUDGET:
    as many trials as fit)."""
    epochs_fit = int(left_s // epoch_s) * concurrency
    full = epochs_fit // max(1, epochs)
    if num_samples == UNTIL_BUDGET:
        return (f"time budget: an epoch takes about {epoch_s:.0f} s; the {clock_text(left_s)} left fit about "
                f"{epochs_fit} epoch(s) in all ({concurrency} trial(s) at once): about {full} trial(s) to all "
                f"{epochs} epochs, more where ASHA stops weak trials early")
    text = (f"time budget: an epoch takes about {epoch_s:.0f} s; the {clock_text(left_s)} left fit about "
            f"{epochs_fit} epoch(s) in all ({concurrency} trial(s) at once): {min(full, num_samples)} of the "
            f"{num_samples} trial(s) to all {epochs} epochs")
    if full < num_samples:
        per_trial = max(1, epochs_fit // max(1, num_samples))
        text += (f", or all {num_samples} at about {min(per_trial, epochs)} epoch(s) each (--epochs "
                 f"{min(per_trial, epochs)}); ASHA stops weak trials early, so more of them start")
    return text
