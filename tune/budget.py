"""`--time-budget`: a search that ends when its time is up, with what it found so far.

    python tune/search.py --dataset food_kitchen --time-budget 45m

The budget counts this driver's time from the start of its command (RunOptions.started) plus the time every
earlier driver of the search spent in Tune (a resumed search continues the count: `record_driver` keeps each
driver's time in DRIVERS_FILE beside Tune's state; an earlier driver's start-up, before Tune, is not in it).
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

Each driver makes its own `BudgetClock` (`start_clock`) and hands it to what reads it: the stopper and the
callback, the MLflow tracker (tune/tracking.py), the trial table (tune/progress.py) and the search's end
(tune/finish.py). Those Tune hooks are `NeedsClock`: Tune pickles them into tuner.pkl and a resume unpickles
them from there, so the clock, which is this driver's (its start, what earlier drivers spent), is never pickled
with them, and `give_clock` hands the restored hooks the clock of the driver that resumes (Tune also saves the
stopper with its experiment state: tune/ray_internals.py's `run_config_stopper_kept` has a resumed search stop by
the one handed the clock). Trials never see it: the budget stops them from the driver.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from ray import tune

from tune.names import TUNE_ENDED, UNTIL_BUDGET  # noqa: F401  (read here as budget.UNTIL_BUDGET too)
from tune.storage import read_text, write_text

DRIVERS_FILE = "dpgdiff_drivers.json"  # beside Tune's state: when each driver of the search ran Tune, and for how long
# What a budgeted search ends with besides tune/finish.py's DONE_OUTCOMES; done too, when the budget ended the search
BUDGET_OUTCOMES = ("stopped by the time budget", "not started (time budget)")


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


def planned_text(num_samples: int) -> str:
    """'8 trials', or 'trials until the time budget is spent' (UNTIL_BUDGET)."""
    return "trials until the time budget is spent" if num_samples == UNTIL_BUDGET else f"{num_samples} trials"


@dataclass
class BudgetClock:
    """This driver's view of the budget: `spent_before` seconds by earlier drivers, and this one's start."""

    budget_s: float
    spent_before: float
    started: float  # time.time() when this driver started
    stopping: bool = False  # the budget is spent: Tune is stopping the search (BudgetCallback decides when)
    stopped_ids: frozenset = frozenset()  # the trials it stopped: started (`started`) and not ended when it was spent
    # A first epoch's length, extrapolated from a trial's in-epoch progress when it cannot fit (`first_epoch_note`)
    epoch_s: Optional[float] = None

    def elapsed(self, now: Optional[float] = None) -> float:
        """The search's time so far, earlier drivers included."""
        return self.spent_before + ((now or time.time()) - self.started)

    def left(self, now: Optional[float] = None) -> float:
        return self.budget_s - self.elapsed(now)

    def expired(self, now: Optional[float] = None) -> bool:
        return self.left(now) <= 0


def start_clock(budget_s: Optional[float], spent_before: float, started: float) -> Optional[BudgetClock]:
    """This driver's clock (None without a budget); says when the trials stop and when the search ends."""
    if not budget_s:
        return None
    clock = BudgetClock(budget_s, spent_before, started)
    margin = margin_s(budget_s)
    earlier = f"; {clock_text(spent_before)} spent by earlier drivers" if spent_before else ""
    print(f"time budget {clock_text(budget_s)}{earlier}: trials stop in {clock_text(clock.left())}; selecting, "
          f"testing and registering the best trial may take a margin of {clock_text(margin)}, so the search ends "
          f"within {clock_text(budget_s + margin)} of its start", flush=True)
    return clock


def stopped_by_budget(clock: Optional[BudgetClock], trial_id: str) -> bool:
    """Whether the budget stopped this trial (it was live when the budget was spent), in this driver."""
    return clock is not None and clock.stopping and trial_id in clock.stopped_ids


def budget_ended(clock: Optional[BudgetClock]) -> bool:
    """Whether this driver's search ended because its budget was spent."""
    return clock is not None and clock.stopping


def progress_note(clock: Optional[BudgetClock]) -> str:
    """"; time budget left M:SS" for the progress line (empty without a budget)."""
    if clock is None:
        return ""
    left = clock.left()
    return f"; time budget: {clock_text(left)} left" if left > 0 else "; time budget spent: stopping"


class NeedsClock:
    """A Tune hook (callback, stopper, progress reporter) that reads the search's BudgetClock as `self.clock`.

    The clock is this driver's, never pickled with the hook: a hook Tune unpickles on resume has none (this class's
    None) until `give_clock` hands it the resuming driver's. A hook with its own __getstate__ leaves it out too."""

    clock: Optional[BudgetClock] = None  # no budget, or not handed yet

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "clock"}


def give_clock(clock: Optional[BudgetClock], run_config: Any, *more: Any) -> None:
    """Hand this driver's clock to the hooks of the RunConfig that Tuner.fit uses (tune.ray_internals.run_config:
    those of a restored Tuner are the ones its first driver saved) and to `more` (the driver's own tracker)."""
    hooks: Iterable[Any] = (*(run_config.callbacks or ()), run_config.stop, run_config.progress_reporter, *more)
    for hook in hooks:
        if isinstance(hook, NeedsClock):
            hook.clock = clock


class BudgetStopper(NeedsClock, tune.Stopper):
    """Stops the whole experiment once BudgetCallback has found the budget spent (no clock: never). Tune then
    starts no new trial and stops the live ones at once (TERMINATED, their checkpoints kept), without its
    per-trial completion hooks: tune/tracking.py and tune/finish.py record them as stopped by the budget."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # no single trial is stopped for its own sake; stop_all ends them together

    def stop_all(self) -> bool:
        return budget_ended(self.clock)


class BudgetCallback(NeedsClock, tune.Callback):
    """Once the first epoch has been timed: how many trials of how many epochs fit in the budget left."""

    def __init__(self, epochs: int, num_samples: int, concurrency: int) -> None:
        self.epochs, self.num_samples, self.concurrency = epochs, num_samples, max(1, concurrency)
        self._said = False  # the what-fits line is printed (once the first epoch is timed, or cannot fit)
        self._looked = 0.0  # when the first epoch's progress was last read (every PROGRESS_LOOK_S)

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: a resume says it again
        return {"epochs": self.epochs, "num_samples": self.num_samples, "concurrency": self.concurrency}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """At the start of Tune's step in which the budget is found spent: which trials are live, then stop.
        Before any epoch is timed: whether the first epoch can fit at all (`first_epoch_note`)."""
        clock = self.clock
        if clock is not None and not self._said and time.time() - self._looked >= PROGRESS_LOOK_S:
            self._looked = time.time()
            note = first_epoch_note(clock, trials)
            if note:
                self._said = True
                print(note, flush=True)
        if clock is None or clock.stopping or not clock.expired():
            return
        live = frozenset(t.trial_id for t in trials if t.status not in TUNE_ENDED and started(t))
        clock.stopped_ids, clock.stopping = live, True
        print(f"\ntime budget {clock_text(clock.budget_s)} spent: no new trial starts; stopping {len(live)} live "
              "trial(s), each keeping its checkpoints", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        clock = self.clock
        seconds = result.get("time_this_iter_s")
        if self._said or clock is None or result.get("final") or not seconds:
            return
        self._said = True
        print(fit_message(float(seconds), clock.left(), self.epochs, self.num_samples, self.concurrency), flush=True)


def started(trial: Any) -> bool:
    """Whether a Tune trial has started training: it runs (RUNNING, or PAUSED by a scheduler), or ran before (a
    resumed trial waiting PENDING for its worker: Tune keeps when it first ran, run_metadata.start_time, in its
    saved state). One stopped inside its first epoch has started: the budget stopped it; a PENDING trial that never
    ran has not."""
    ran_before = getattr(getattr(trial, "run_metadata", None), "start_time", None) is not None
    reported = bool((trial.last_result or {}).get("training_iteration"))
    return trial.status in ("RUNNING", "PAUSED") or ran_before or reported


PROGRESS_LOOK_S = 5.0  # how often the budget reads the first epoch's progress (Ray's key-value store)
MIN_PROGRESS = 0.02  # the share of an epoch a trial must have done before its pace says how long the epoch takes


def first_epoch_note(clock: BudgetClock, trials: list) -> Optional[str]:
    """Before any trial has finished an epoch: when no running trial can finish its first one in the budget left
    (at the pace its in-epoch progress shows), the what-fits line says so, with a budget that would fit, and the
    clock keeps the epoch's length for the search's end (tune/finish.py). None while it may fit or cannot tell."""
    from tune.ray_internals import read_progress

    if any((t.last_result or {}).get("training_iteration") for t in trials):
        return None  # an epoch was timed: BudgetCallback.on_trial_result says what fits
    running = [t.trial_id for t in trials if t.status == "RUNNING"]
    paces = [p for p in read_progress(running).values() if p.get("total") and p.get("done", 0) > 0
             and p["done"] / p["total"] >= MIN_PROGRESS and p.get("time", 0) >= clock.started]
    if not paces:
        return None
    now = time.time()
    rest = min(p["seconds"] * (p["total"] / p["done"] - 1) - (now - p["time"]) for p in paces)
    if rest <= clock.left(now):
        return None
    clock.epoch_s = min(p["seconds"] * p["total"] / p["done"] for p in paces)
    return (f"time budget: the first epoch takes about {clock.epoch_s:.0f} s here, and the {clock_text(clock.left(now))} "
            f"left cannot fit its remaining {rest:.0f} s: no trial will finish an epoch in this budget; "
            f"try --time-budget {suggested_budget(clock)}")


def suggested_budget(clock: BudgetClock) -> str:
    """A --time-budget in which a first epoch fits: the time to the first trial's start (taken as the budget so
    far, at most) plus two epochs at the pace seen (or twice the budget, without one), in whole minutes."""
    need = clock.budget_s * 2 if not clock.epoch_s else min(clock.elapsed(), clock.budget_s) + 2 * clock.epoch_s
    return f"{max(1, math.ceil(need / 60))}m"


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


# ------------------------------------------------------------------------------------- drivers


def record_driver(path: str, started: float, wall_s: Optional[float] = None) -> None:
    """Record in DRIVERS_FILE that the driver which started Tune at `started` (epoch seconds) is running
    (wall_s None) or ran it for `wall_s` seconds. A driver killed before recording its time is given one when the
    next driver starts: the time from its start to the last file it wrote in the experiment folder (local
    storage; 0 elsewhere), marked estimated."""
    drivers = read_drivers(path)
    if wall_s is None:
        for d in drivers:
            if d.get("wall_s") is None:
                last = _last_write(path)
                d.update(wall_s=max(0.0, last - float(d["started"])) if last else 0.0, estimated=True)
        drivers.append({"started": started, "wall_s": None})
    else:
        for d in drivers:
            if d.get("started") == started:
                d["wall_s"] = float(wall_s)
    write_text(f"{path}/{DRIVERS_FILE}", json.dumps(drivers, indent=1))


def read_drivers(path: str) -> list[dict[str, Any]]:
    """DRIVERS_FILE's entries ([] when there is none or it cannot be read)."""
    try:
        drivers = json.loads(read_text(f"{path}/{DRIVERS_FILE}") or "[]")
    except ValueError:
        return []
    return [d for d in drivers if isinstance(d, dict) and "started" in d] if isinstance(drivers, list) else []


def search_wall_s(path: str) -> float:
    """The search's wall time: the sum of every driver's time in Tune (issue 27 §2), this one's included once
    it is recorded."""
    return sum(float(d.get("wall_s") or 0.0) for d in read_drivers(path))


def _last_write(path: str) -> Optional[float]:
    if "://" in path or not Path(path).is_dir():
        return None
    times = [f.stat().st_mtime for f in Path(path).rglob("*") if f.is_file() and f.name != DRIVERS_FILE]
    return max(times, default=None)
