"""Issue 42 with a real local Ray: a driver killed in its first seconds leaves a search that --resume starts anew
under the same name, two drivers of one search do not merge, and a --time-budget too short for one epoch says so
before it ends and exits 3 (not "every trial failed")."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.test_search_helpers import (
    env, kill_session, kill_when_file_appears, mlflow_runs, run, search_args, tune_trials,
)
from tune.names import EXIT_BUDGET_TOO_SHORT, EXIT_USAGE
from tune.settings import STATE_FILE

pytestmark = pytest.mark.slow


def test_a_driver_killed_before_ray_starts_is_resumed_anew_and_a_second_driver_is_refused(tmp_path):
    """Kill points in the first second (issue 42 §3): the driver saves the search's settings before it loads the
    data or starts Ray; SIGKILLed right then, --resume starts the search anew under the same name (it used to say
    "nothing to resume"). While that resume runs, the same command in another process is refused (exit 2, the
    holder's PID) and changes nothing; the resume ends with one MLflow run per trial."""
    args = search_args(tmp_path, "early", "--epochs", "1", "--num-samples", "2", "--max-concurrent", "1",
                       "--scheduler", "fifo", "--set", "model.xt_injection=concat_token", train_fn="train_slow")
    folder = tmp_path / "ray_results" / "early"
    log = tmp_path / "killed.log"
    kill_when_file_appears(args, tmp_path, folder / STATE_FILE, log, timeout=300)
    assert "ray session" not in log.read_text(), "the kill came after Ray started: the case was not made"

    resume = [*search_args(tmp_path, "early", "--resume", train_fn="train_slow")]
    first = subprocess.Popen(resume, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        lock = folder / ".dpgdiff_driver.lock"  # the killed driver's PID is in it (its lock is gone): wait for ours
        while first.poll() is None and f'"pid": {first.pid},' not in (lock.read_text() if lock.exists() else ""):
            time.sleep(0.2)
        second = run(resume, tmp_path, timeout=300)
        out, err = first.communicate(timeout=600)
    finally:
        kill_session(first.pid)
    assert first.returncode == 0, f"{out[-4000:]}\n{err[-4000:]}"
    assert "no Tune state was saved" in out and "its trials start anew" in out, out[-3000:]
    assert second.returncode == EXIT_USAGE, second.stderr[-3000:]
    assert f"search 'early' is being run by another command (PID {first.pid}," in second.stderr, second.stderr[-2000:]
    trials = tune_trials(tmp_path, "early")
    assert len(trials) == 2 and all(t.status == "TERMINATED" for t in trials), trials
    parent, children = mlflow_runs(tmp_path, "early")
    assert parent.info.status == "FINISHED" and len(children) == 2, [c.data.tags for c in children]


def test_a_budget_too_short_for_one_epoch_says_so_and_exits_3(tmp_path):
    """Issue 42 §1: a search whose budget ends before any epoch does (here epochs of about 300 s: 594 batches of
    0.5 s) said "every trial failed" and exited 1. Now the what-fits line says, while the first epoch runs, that
    it cannot fit and which budget would, and the search ends with that and exit status 3."""
    args = [a for a in search_args(tmp_path, "short", "--epochs", "1", "--num-samples", "2", "--scheduler", "fifo",
                                   "--max-concurrent", "1", "--set", "train.batch_size=1", "--set", "train.mode=last",
                                   "--set", "model.xt_injection=concat_token", "--time-budget", "120s",
                                   train_fn="train_long_epochs") if a != "--quiet"]
    result = run(args, tmp_path, timeout=400)
    out, err = result.stdout, result.stderr
    assert result.returncode == EXIT_BUDGET_TOO_SHORT, f"{out[-4000:]}\n{err[-4000:]}"
    note = re.search(r"time budget: the first epoch takes about (\d+) s here, .* no trial will finish an epoch in "
                     r"this budget; try --time-budget (\d+)m", out)
    assert note, out[-4000:]
    epoch_s, suggested_min = int(note.group(1)), int(note.group(2))
    assert 120 < epoch_s and suggested_min * 60 > epoch_s, note.group(0)
    assert "the time budget ended before any trial finished an epoch (an epoch takes about" in err, err[-3000:]
    assert "every trial failed" not in err
    assert re.search(r"2 trial\(s\): .*1 stopped by the time budget, 1 not started \(time budget\)", out), out[-2000:]
    import optuna

    study = optuna.load_study(study_name="short", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)), "a study trial left RUNNING"
    parent, _ = mlflow_runs(tmp_path, "short")
    assert parent.info.status == "FAILED" and "before any trial finished an epoch" in parent.data.tags["error"]
