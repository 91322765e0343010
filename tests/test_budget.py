"""--time-budget (tune/budget.py): the duration flag, the margin, what fits, and a budgeted search that ends in time
with the trial it stopped recorded as stopped by the budget and selectable."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.busy import scaled
from tests.test_search_helpers import (
    assert_study_agrees_with_mlflow,
    env,
    kill_session,
    mlflow_runs,
    search_args,
    tune_trials,
)
from tune import budget
from tune.settings import SearchError, parse_duration


def test_durations_parse_and_bad_ones_name_the_flag():
    assert parse_duration("45m") == 2700 and parse_duration("2h") == 7200 and parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400 and parse_duration(" 10 m ") == 600
    for bad in ("45", "m", "45 minutes", "-5m", "0s", "1h-30m", ""):
        with pytest.raises(SearchError, match="--time-budget"):
            parse_duration(bad)


def test_margin_and_what_fits():
    assert budget.margin_s(60) == 63.0 and budget.margin_s(2700) == 195.0 and budget.margin_s(10 * 3600) == 600.0
    text = budget.fit_message(epoch_s=100, left_s=2600, epochs=3, num_samples=16, concurrency=2)
    assert "52 epoch(s) in all (2 trial(s) at once): 16 of the 16 trial(s) to all 3 epochs" in text
    text = budget.fit_message(epoch_s=100, left_s=2600, epochs=3, num_samples=30, concurrency=1)
    assert "26 epoch(s)" in text and "11 of the 30" not in text and "8 of the 30 trial(s)" in text
    assert "or all 30 at about 1 epoch(s) each (--epochs 1)" in text
    text = budget.fit_message(epoch_s=100, left_s=2600, epochs=3, num_samples=budget.UNTIL_BUDGET, concurrency=2)
    assert "52 epoch(s) in all (2 trial(s) at once): about 17 trial(s) to all 3 epochs" in text


def test_the_clock_counts_earlier_drivers_and_the_stopper_waits_for_the_callback(capsys):
    import pickle
    from types import SimpleNamespace

    clock = budget.start_clock(100.0, spent_before=40.0, started=time.time() - 50.0)
    assert "time budget 0:01:40; 0:00:40 spent by earlier drivers: trials stop in 0:00:1" in capsys.readouterr().out
    assert 9 < clock.left() < 11 and not clock.expired() and "time budget: 0:00:1" in budget.progress_note(clock)
    stopper, callback = budget.BudgetStopper(), budget.BudgetCallback(epochs=3, num_samples=4, concurrency=1)
    other = SimpleNamespace()  # a hook that reads no clock (e.g. Tune's CSV logger) is left alone
    budget.give_clock(clock, SimpleNamespace(callbacks=[callback, other], stop=stopper, progress_reporter=None))
    assert stopper.clock is clock and callback.clock is clock and not hasattr(other, "clock")
    clock.started -= 20  # spent
    assert clock.expired() and not stopper.stop_all(), "the callback decides, with the live trials in hand"

    class T:  # what the callback reads of Tune's Trial
        def __init__(self, tid, status):
            self.trial_id, self.status, self.last_result = tid, status, {}

    resumed = T("d", "PENDING")  # a resumed trial waiting for its worker: it trained an epoch before
    resumed.last_result = {"training_iteration": 1, "epoch": 1}
    killed_early = T("e", "PENDING")  # resumed too: it ran (Tune saved when), and was killed inside its first epoch
    killed_early.run_metadata = SimpleNamespace(start_time=time.time() - 100)
    callback.on_step_begin(0, [T("a", "RUNNING"), T("b", "TERMINATED"), T("c", "PENDING"), resumed, killed_early])
    assert stopper.stop_all() and budget.budget_ended(clock)
    assert "spent: no new trial starts; stopping 3 live trial(s)" in capsys.readouterr().out
    assert all(budget.stopped_by_budget(clock, t) for t in "ade")
    assert not budget.stopped_by_budget(clock, "b")
    assert not budget.stopped_by_budget(clock, "c"), "a PENDING trial that never ran was not started, not stopped"
    # the clock is this driver's: a hook pickled into tuner.pkl and unpickled by a resume comes back without it
    for hook in (stopper, callback):
        assert pickle.loads(pickle.dumps(hook)).clock is None
    assert not pickle.loads(pickle.dumps(stopper)).stop_all()
    assert budget.start_clock(None, 0.0, 0.0) is None and not capsys.readouterr().out
    assert not budget.stopped_by_budget(None, "a") and budget.progress_note(None) == ""


def test_outcome_counts_name_what_the_budget_stopped_or_left_unstarted():
    from types import SimpleNamespace

    from tune.finish import outcome_counts
    from tune.names import TrialStatus

    rows = [{"trial_id": "a", "status": TrialStatus.FINISHED}, {"trial_id": "b", "status": TrialStatus.STOPPED_BY_BUDGET},
            {"trial_id": "c", "status": TrialStatus.NOT_RUN}]
    saved = [SimpleNamespace(trial_id=t, status="TERMINATED") for t in "abc"]
    assert outcome_counts(rows, saved, planned=5, ended_by_budget=True) == {
        "finished": 1, "stopped early by ASHA": 0, "failed": 0, "stopped by the time budget": 1,
        "not started (time budget)": 3, "interrupted": 0, "not started": 0}
    assert "stopped by the time budget" not in outcome_counts(rows[:1], saved[:1], planned=1)
    unbounded = outcome_counts(rows, saved, planned=budget.UNTIL_BUDGET, ended_by_budget=True)
    assert unbounded["not started (time budget)"] == 1, "only the trial Tune had made: no count to fall short of"


def test_a_trial_the_budget_stopped_inside_its_first_epoch_counts_as_stopped_there(capsys):
    """Issue 42 §7: a trial at 77% of its first epoch when the budget ended was counted "not started". It started:
    the summary counts it stopped by the budget and says it was inside its first epoch; the PENDING trial beside it,
    which never ran, is the one not started."""
    from types import SimpleNamespace

    from tune.finish import first_epoch_note, outcome_counts
    from tune.names import TrialStatus

    clock = budget.start_clock(10.0, spent_before=0.0, started=time.time() - 20.0)
    callback = budget.BudgetCallback(epochs=3, num_samples=2, concurrency=1)
    callback.clock = clock
    live = [SimpleNamespace(trial_id="a", status="RUNNING", last_result={}),  # 77% into epoch 1: no result yet
            SimpleNamespace(trial_id="b", status="PENDING", last_result={})]
    callback.on_step_begin(0, live)
    capsys.readouterr()
    rows = [{"trial_id": t, "status": TrialStatus.NOT_RUN} for t in "ab"]  # neither reported: NOT_RUN rows
    saved = [SimpleNamespace(trial_id=t, status="TERMINATED") for t in "ab"]
    counts = outcome_counts(rows, saved, planned=2, ended_by_budget=True, budget_stopped=clock.stopped_ids)
    assert counts["stopped by the time budget"] == 1 and counts["not started (time budget)"] == 1, counts
    assert first_epoch_note(rows, clock) == "1 inside its first epoch; "


def _timed_search(args: list[str], cwd) -> tuple[str, str, float]:
    """Run a search command in its own session (killed after, by its session id) -> (stdout, stderr, seconds from
    before the process started); it must exit 0."""
    t0 = time.time()
    proc = subprocess.Popen(args, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=scaled(600))
    finally:
        kill_session(proc.pid)
    wall = time.time() - t0
    assert proc.returncode == 0, f"{out[-4000:]}\n{err[-4000:]}"
    return out, err, wall


@pytest.mark.slow
def test_a_budgeted_search_ends_within_budget_plus_margin_and_keeps_the_trial_it_stopped(tmp_path):
    """Trials of 100 slow epochs (stub: 1 s pause each) one at a time, longer than the budget: the budget ends the
    search inside the first trial. It ends within budget + the margin it printed (timed from before the process starts), the trial
    running at the deadline is FINISHED in MLflow with stopped_by=time_budget (not stopped early, not failed),
    and the study agrees with MLflow."""
    name, budget_s = "budgeted", round(scaled(75))  # the driver's clock counts Ray's start: slower when busy
    # One trial alone outlasts the budget (100 epochs of >= 1 s each), so the deadline falls inside a trial, never
    # in the gap between two (under load, starting the next trial can take seconds; a 3-epoch setting was flaky).
    args = search_args(tmp_path, name, "--epochs", "100", "--num-samples", "3", "--max-concurrent", "1",
                       "--scheduler", "fifo", "--set", "model.xt_injection=concat_token",
                       "--time-budget", f"{budget_s}s", train_fn="train_slow")
    args.remove("--quiet")  # the trial table and progress line too: the budget counting down, the stopped trial
    out, err, wall = _timed_search(args, tmp_path)
    promised = re.search(r"so the search ends within (\d+):(\d\d):(\d\d) of its start", out)
    assert promised, out[-4000:]
    h, m, s = map(int, promised.groups())
    assert wall <= 3600 * h + 60 * m + s, f"ended after {wall:.0f} s, promised {promised.group(0)}\n{out[-3000:]}"
    assert f"margin of {budget.clock_text(budget.margin_s(budget_s))}" in out
    assert "time budget: an epoch takes about" in out, "what fits, once the first epoch is timed"
    assert "stopped by the time budget" in out and "UNFINISHED" not in err and "Best trial" in out
    assert re.search(r"time budget: \d:\d\d:\d\d left", out) and "| STOPPED_BY_BUDGET " in out

    trials = tune_trials(tmp_path, name)
    assert 1 <= len(trials) <= 3 and all(t.status == "TERMINATED" for t in trials)
    parent, children = mlflow_runs(tmp_path, name)
    assert parent.info.status == "FINISHED" and "dpgdiff.unfinished" not in parent.data.tags
    assert parent.data.metrics["search_n_stopped_by_budget"] >= 1
    stopped = [c for c in children if c.data.tags.get("dpgdiff.stopped_by") == "time_budget"]
    assert stopped, [c.data.tags for c in children]
    for run in stopped:
        assert run.info.status == "FINISHED" and "dpgdiff.stopped_early" not in run.data.tags
        assert "dpgdiff.interrupted" not in run.data.tags and "error" not in run.data.tags
    assert all(c.info.status == "FINISHED" for c in children), [(c.info.status, c.data.tags) for c in children]
    assert sum(c.data.tags.get("dpgdiff.selected") == "1" for c in children) == 1
    assert_study_agrees_with_mlflow(tmp_path, name)


@pytest.mark.slow
def test_a_budget_only_search_runs_trials_until_it_is_spent_and_a_resume_continues_the_count(tmp_path):
    """--time-budget without --num-samples: Tune starts trials (1 short epoch each, one at a time) until the budget
    stops the search. Interrupted (Ctrl-C) once a trial has finished, it is UNFINISHED; resumed, it goes on
    starting new trials (none rerun, no Optuna trial number twice) until the budget, counted over both drivers,
    is spent, and it is then complete (exit 0), with the study agreeing with MLflow.

    The budget leaves the resume room for new trials on a loaded machine: it counts the first driver's time in
    Tune and all of the resume's, its Ray start included (20-40 s on 2 cores beside two other workers)."""
    import json
    import os
    import signal

    from tests.test_search_helpers import run, trial_results
    from tune.budget import read_drivers

    name, budget_s = "until-spent", round(scaled(90))
    args = search_args(tmp_path, name, "--epochs", "1", "--max-concurrent", "1", "--scheduler", "fifo",
                       "--set", "model.xt_injection=concat_token", "--time-budget", f"{budget_s}s")
    log = tmp_path / "first.log"
    e = env()
    e["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # snapshot the experiment often, so what finished is known to the restore
    with log.open("w") as handle:
        proc = subprocess.Popen(args, cwd=tmp_path, env=e, stdout=handle, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        deadline = time.time() + scaled(240)
        finished: list = []
        while time.time() < deadline and proc.poll() is None:
            finished = [d for d in (tmp_path / "ray_results" / name).glob("trial_*")
                        if any(r.get("final") for r in trial_results(d))]
            if finished:
                break
            time.sleep(0.5)
        assert finished and proc.poll() is None, log.read_text()[-4000:]
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=scaled(90))
    finally:
        kill_session(proc.pid)
    text = log.read_text()
    assert proc.returncode == 130 and "trials until the time budget is spent" in text, text[-4000:]
    assert "UNFINISHED" in text and "trials until the time budget is spent done" in text, text[-3000:]
    before = {t.trial_id for t in tune_trials(tmp_path, name)}

    resumed = run(search_args(tmp_path, name, "--resume"), tmp_path, timeout=400)
    assert resumed.returncode == 0, f"{resumed.stdout[-4000:]}\n{resumed.stderr[-4000:]}"
    assert "UNFINISHED" not in resumed.stderr and "Best trial" in resumed.stdout
    trials = tune_trials(tmp_path, name)
    drivers = read_drivers(str(tmp_path / "ray_results" / name))
    assert before < {t.trial_id for t in trials}, \
        f"the resume starts new trials: the count is the budget's\n{drivers}\n{resumed.stdout[-3000:]}"
    assert all(t.status == "TERMINATED" for t in trials), [t.status for t in trials]
    summary = re.search(r"\n(\d+) trial\(s\): .*; wall time", resumed.stdout)
    assert summary and int(summary.group(1)) == len(trials), resumed.stdout[-3000:]
    assert len(drivers) == 2 and sum(d["wall_s"] for d in drivers) <= budget_s + budget.margin_s(budget_s), drivers
    parent, children = mlflow_runs(tmp_path, name)
    assert parent.info.status == "FINISHED" and "dpgdiff.unfinished" not in parent.data.tags
    assert json.loads(parent.data.params["num_samples"]) == budget.UNTIL_BUDGET
    numbers = [int(c.data.tags["dpgdiff.optuna_trial"]) for c in children]
    assert len(numbers) == len(set(numbers)) == len(children), numbers
    assert sum(c.data.tags.get("dpgdiff.selected") == "1" for c in children) == 1
    assert_study_agrees_with_mlflow(tmp_path, name)
