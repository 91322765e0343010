"""The trial table printed while a search runs, with the elapsed time, an estimate of the time left and how far
the running trials are inside their epochs.

Status column: Tune's TERMINATED is split into FINISHED (trained to its last epoch: a final result),
STOPPED_EARLY (ASHA stopped it), STOPPED_BY_BUDGET (the search's --time-budget stopped it, tune/budget.py) and
NOT_RUN (`shown_status`; tune/names.py's `TrialStatus`). Location column: blank for a trial whose last result came
from an earlier driver session (a resumed search), whose worker is gone, until it reports again.

The line under the table also counts a --time-budget down (tune/budget.py: `progress_note`), from the clock the
driver hands the reporter (`clock`, never pickled with it).

Time left (`estimate_seconds_left`): every unfinished trial runs to the last epoch (ASHA only shortens it), at
the median seconds per epoch, `concurrency` trials at once. The pace is this driver's where it has one (epochs
reported since it started, and the running trials' in-epoch progress: examples done in how many seconds, training
only), else that of every epoch so far: a resumed search on a machine slower than before (more load) would
otherwise run past the earlier pace, and its estimate stop counting down. A running trial's time since its last
result counts as done, and one with in-epoch progress finishes its current epoch at its own pace, so the estimate
counts down between tables even when no result arrives.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ray import tune

from tune import budget
from tune.budget import NeedsClock, clock_text
from tune.names import TUNE_ENDED, TrialStatus

IN_EPOCH_SHOWN = 4  # running trials named on the in-epoch progress line; the rest are counted


@dataclass(frozen=True)
class TrialClock:
    """What the estimate needs of one trial."""

    status: str  # Tune's status
    epochs: int  # epochs reported
    seconds: float  # seconds those epochs took (Tune's time_total_s)
    since_result: float = 0.0  # RUNNING: seconds spent since its last result (or since its epoch began)
    epoch_seconds: Optional[float] = None  # seconds per epoch extrapolated from in-epoch progress (training only)
    recent_epoch_s: Optional[float] = None  # its last epoch's seconds, when it reported it to this driver


def estimate_seconds_left(trials: Iterable[Any], max_epochs: int, num_samples: int,
                          concurrency: int) -> Optional[float]:
    """Upper-bound estimate of the search's remaining wall time, or None while nothing has been timed.

    trials: a TrialClock, or (status, epochs done, seconds trained), per trial Tune knows. The pace: the median of
    this driver's epoch times (`recent_epoch_s`, `epoch_seconds`) where there are any, else of every trial's
    seconds per epoch so far; a trial with in-epoch progress ends its current epoch at its own pace."""
    clocks = [t if isinstance(t, TrialClock) else TrialClock(*t) for t in trials]
    per_epoch = ([s for c in clocks for s in (c.recent_epoch_s, c.epoch_seconds) if s]
                 or [c.seconds / c.epochs for c in clocks if c.epochs >= 1 and c.seconds > 0])
    if not per_epoch:
        return None
    epoch = statistics.median(per_epoch)
    left = 0.0
    for c in clocks:
        if c.status in TUNE_ENDED or c.epochs >= max_epochs:
            continue
        if c.epoch_seconds:  # in its epoch: the rest of it at its own pace, then the epochs after it
            left += max(0.0, c.epoch_seconds - c.since_result) + (max_epochs - c.epochs - 1) * epoch
        else:
            left += max(0.0, (max_epochs - c.epochs) * epoch - c.since_result)
    left += max(0, num_samples - len(clocks)) * max_epochs * epoch
    return left / max(1, concurrency)


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


class _ShownTrial:
    """A trial with another last result or temporary state (no location); everything else is the trial's."""

    def __init__(self, trial: Any, last_result: dict, temporary_state: Any) -> None:
        self._trial, self.last_result, self.temporary_state = trial, last_result, temporary_state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def __str__(self) -> str:
        return str(self._trial)


_LIVE = ("RUNNING", "PENDING", "PAUSED")  # Tune's statuses of a trial that has not ended


class ProgressReporter(NeedsClock, tune.CLIReporter):
    """Ray Tune's CLIReporter with FINISHED / STOPPED_EARLY statuses, plus lines: elapsed time and the time
    left, and how far the running trials are in their epochs (examples/s, fraction of the epoch)."""

    def __init__(self, *, max_epochs: int, num_samples: int, early_stopping: bool = True, concurrency: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_args = dict(max_epochs=max_epochs, num_samples=num_samples, early_stopping=early_stopping,
                               concurrency=concurrency, **kwargs)
        self._max_epochs, self._num_samples = max_epochs, num_samples
        self._caveat = "; ASHA shortens it" if early_stopping else ""
        # Trials at once: what the cluster fits (the driver's count), or more if seen. Not the trials running at
        # the first table: on resume they are all PENDING then, and the estimate came out doubled.
        self._concurrency = max(1, concurrency)
        self._start = time.time()
        self._seen: dict[str, tuple[Any, float]] = {}  # trial id -> ((last result's iteration, running?), since when)

    # A resumed search unpickles this reporter from tuner.pkl, written by the driver that was interrupted,
    # perhaps by an older version of this class. So only the constructor's arguments are pickled, and a
    # restored reporter is built afresh: new fields exist, and the elapsed time counts from this driver's
    # start (not the interrupted one's, which would add the time the search was not running).
    def __getstate__(self) -> dict[str, Any]:
        return {"init_args": self._init_args} if self._init_args is not None else super().__getstate__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "init_args" in state:
            self.__init__(**state["init_args"])
            return
        # pickled whole by a version without __getstate__: keep its fields, add those it lacks
        self.__dict__.update(state)
        self.__dict__.setdefault("_caveat", "; ASHA shortens it")
        self._init_args, self._start, self._seen = None, time.time(), {}

    # ------------------------------------------------------------------ Tune's hooks

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        """Called by Tune every step: notes when each trial's latest result arrived (driver clock)."""
        self._note_results(trials, time.time())
        return super().should_report(trials, done)

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        now = time.time()
        self._note_results(trials, now)
        text = self._progress_str([self._shown(t) for t in trials], done, *sys_info)
        self._print(relabel_statuses(text, {str(t): shown_status(t, self.clock) for t in trials}))
        self._concurrency = max(self._concurrency, sum(t.status == "RUNNING" for t in trials))
        progress = self._read_progress([t.trial_id for t in trials if t.status == "RUNNING"])
        for line in self.status_lines(trials, progress, now):
            print(line, flush=True)

    # ------------------------------------------------------------------ the lines

    def status_lines(self, trials: list[Any], progress: dict[str, dict[str, Any]], now: float) -> list[str]:
        """The lines under the table: elapsed and time left, then the in-epoch progress of running trials.
        progress: trial id -> what its trial last published (`tune.ray_internals.read_progress`)."""
        current = {tid: p for tid, p in progress.items() if self._is_current(tid, p, trials)}
        clocks = [self._trial_clock(t, current.get(t.trial_id), now) for t in trials]
        left = estimate_seconds_left(clocks, self._max_epochs, self._num_samples, self._concurrency)
        if self._num_samples == budget.UNTIL_BUDGET:  # trials start until the budget is spent: it is the estimate
            estimate = "trials start until the time budget is spent"
        elif left is None:
            estimate = "time left: estimated once a trial has trained for a few seconds"
        elif not any(c.epochs for c in clocks):
            estimate = (f"time left: at most about {clock_text(left)} (every trial to the last epoch{self._caveat}; "
                        "from the first epoch's progress, validation not timed yet)")
        else:
            estimate = f"time left: at most about {clock_text(left)} (every trial to the last epoch{self._caveat})"
        lines = [f"elapsed {clock_text(now - self._start)}; {estimate}{budget.progress_note(self.clock)}"]
        parts = []
        for t in trials:
            p = current.get(t.trial_id)
            if t.status != "RUNNING" or p is None:
                continue
            rate = p["done"] / p["seconds"] if p["seconds"] > 0 else 0.0
            parts.append(f"{t.trial_id} {100 * p['done'] / max(1, p['total']):.0f}% of epoch {p['epoch']} "
                         f"({_rate(rate)} examples/s)")
        if parts:
            more = f", and {len(parts) - IN_EPOCH_SHOWN} more" if len(parts) > IN_EPOCH_SHOWN else ""
            lines.append("in epoch: " + ", ".join(parts[:IN_EPOCH_SHOWN]) + more)
        return lines

    def _read_progress(self, trial_ids: list[str]) -> dict[str, dict[str, Any]]:
        from tune.ray_internals import read_progress

        return read_progress(trial_ids) if trial_ids else {}

    def _is_current(self, trial_id: str, progress: dict[str, Any], trials: list[Any]) -> bool:
        """Progress of the epoch after the trial's last result, published during this driver session (not left
        in a cluster's store by an earlier one)."""
        trial = next((t for t in trials if t.trial_id == trial_id), None)
        if trial is None or progress.get("time", 0) < self._start:
            return False
        return int(progress.get("epoch", 0)) > _epochs(trial)

    def _note_results(self, trials: list[Any], now: float) -> None:
        for t in trials:
            # Tune calls this every step with every trial of the search: an ended trial's clock is never read again,
            # and its `last_result` (a property that copies) over thousands of them cost the driver O(trials) per
            # step (issue 41)
            if t.status not in _LIVE:
                continue
            # a new result, or the trial started running (a resumed trial waits PENDING first): the clock restarts
            key = ((t.last_result or {}).get("training_iteration"), t.status == "RUNNING")
            if t.trial_id not in self._seen or self._seen[t.trial_id][0] != key:
                self._seen[t.trial_id] = (key, now)

    def _trial_clock(self, trial: Any, progress: Optional[dict[str, Any]], now: float) -> TrialClock:
        result = trial.last_result or {}
        since, epoch_seconds = 0.0, None
        if trial.status == "RUNNING":
            if progress is not None:  # in-epoch: seconds since the epoch began, as of now
                since = progress["seconds"] + max(0.0, now - progress["time"])
                if progress["done"] > 0:
                    epoch_seconds = progress["seconds"] * progress["total"] / progress["done"]
            elif result and trial.trial_id in self._seen:
                since = now - self._seen[trial.trial_id][1]
        # the last epoch's time, if this driver saw it (a resumed trial's earlier epochs may have run at another pace)
        # (not a final report's: it tests and saves, it trains no epoch)
        recent = (result.get("time_this_iter_s") if int(result.get("timestamp", 0) or 0) >= int(self._start)
                  and not result.get("final") else None)
        return TrialClock(trial.status, _epochs(trial), float(result.get("time_total_s", 0.0) or 0.0), since,
                          epoch_seconds, float(recent) if recent else None)

    def _shown(self, trial: Any) -> Any:
        """The trial as the table shows it: without a location while its last result is an earlier driver
        session's (that worker is gone). Tune's table takes the location from the result's node_ip and pid,
        else from the trial's temporary state."""
        original = trial.last_result or {}
        result = original
        state = original_state = getattr(trial, "temporary_state", None)
        if trial.status == "TERMINATED" and self._metric and self._metric not in result:
            # stopped before its first result (--time-budget): Tune's table sorts TERMINATED trials by the metric
            # and fails on a missing one
            result = {**result, self._metric: float("nan")}
        elif result and int(result.get("timestamp", self._start) or 0) < int(self._start):
            result = {k: v for k, v in result.items() if k not in ("node_ip", "pid")}
            state = _NoLocation(state)
        # Tune's "current best trial" line looks every parameter column up in the config of the best trial's last
        # result and fails on a missing key: a conditional parameter the trial did not sample, or the warm-start
        # column of a trial Optuna sampled (only warm-start trials carry that key). Missing ones are shown blank.
        if result:
            config = result.get("config") or getattr(trial, "config", None) or {}
            missing = [p for p in (self._parameter_columns or ()) if p not in config]
            if missing or "config" not in result:
                result = {**result, "config": {**config, **dict.fromkeys(missing, "")}}
        if result is original and state is original_state:
            return trial
        return _ShownTrial(trial, result, state)


def shown_status(trial: Any, clock: Optional[budget.BudgetClock] = None) -> str:
    """Tune's status, with TERMINATED told apart: FINISHED (trained to its last epoch: it sent its final result),
    STOPPED_EARLY (the scheduler stopped it), STOPPED_BY_BUDGET (the budget of `clock` stopped it, tune/budget.py)
    or NOT_RUN (ended before its first result)."""
    if trial.status != "TERMINATED":
        return trial.status
    if (trial.last_result or {}).get("final"):
        return TrialStatus.FINISHED
    if budget.stopped_by_budget(clock, trial.trial_id):
        return TrialStatus.STOPPED_BY_BUDGET
    if not (trial.last_result or {}).get("epoch"):  # ended before it reported (e.g. a PENDING trial at the end)
        return TrialStatus.NOT_RUN
    return TrialStatus.STOPPED_EARLY


def relabel_statuses(text: str, labels: dict[str, str]) -> str:
    """Tune's status text with the status cells of its trial table, and its "Number of trials" counts, replaced
    by `labels` (trial name -> status shown); the status column widens when a label needs it. Tune's table
    (tabulate, psql) orders and groups rows by Tune's own statuses, so the labels go in after it is drawn."""
    lines = text.split("\n")
    header = next((i for i, line in enumerate(lines) if line.startswith("| Trial name")), None)
    if header is None:
        return text
    bars = [i for i, c in enumerate(lines[header]) if c == "|"]
    if len(bars) < 3 or lines[header][bars[1] + 1:bars[2]].strip() != "status":
        return text
    name_at, (left, right) = bars[0], bars[1:3]
    width = right - left - 3
    extra = max(0, max((len(v) for v in labels.values()), default=0) - width)
    first = header
    while first > 0 and lines[first - 1].startswith("+"):
        first -= 1
    counts: dict[str, int] = {}
    for i in range(first, len(lines)):
        line = lines[i]
        if not line.startswith(("+", "|")) or len(line) <= right:
            break
        middle = line[left + 1:right]
        if set(middle) == {"-"}:
            middle = "-" * (len(middle) + extra)
        else:
            cell = middle.strip()
            if i != header:
                cell = labels.get(line[name_at + 1:left].strip(), cell)
            middle = f" {cell.ljust(width + extra)} "
        lines[i] = line[:left + 1] + middle + line[right:]
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for i, line in enumerate(lines[:header]):
        if line.startswith("Number of trials: ") and " (" in line:
            lines[i] = line.split(" (", 1)[0] + " (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
    return "\n".join(lines)


class _NoLocation:
    """A trial's temporary state whose location prints as nothing (the table's `loc` cell)."""

    location = ""

    def __init__(self, state: Any) -> None:
        self._state = state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def _epochs(trial: Any) -> int:
    return int((trial.last_result or {}).get("epoch", 0) or 0)
