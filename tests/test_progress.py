"""The search's progress line: elapsed time and an upper-bound estimate of the time left (tune/progress.py)."""

from __future__ import annotations

import pytest

from tune.progress import estimate_seconds_left


def test_no_estimate_before_an_epoch_is_timed():
    assert estimate_seconds_left([("RUNNING", 0, 0.0), ("PENDING", 0, 0.0)], 3, 8, 2) is None


def test_estimate_counts_unfinished_epochs_and_trials_not_yet_created():
    trials = [("TERMINATED", 3, 300.0),  # 100 s per epoch, done
              ("RUNNING", 1, 120.0),     # 120 s per epoch, 2 epochs left
              ("PENDING", 0, 0.0)]       # 3 epochs left
    # median of (100, 120) s per epoch = 110; 2 + 3 epochs left + 5 trials not created x 3 epochs = 20 epochs; 2 at once
    assert estimate_seconds_left(trials, max_epochs=3, num_samples=8, concurrency=2) == pytest.approx(20 * 110 / 2)
    assert estimate_seconds_left([("TERMINATED", 3, 300.0)], 3, 1, 1) == 0.0  # all done


def test_a_resumed_reporter_counts_elapsed_time_from_its_own_start(monkeypatch):
    import pickle

    import tune.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    reporter = progress.ProgressReporter(max_epochs=3, num_samples=2)
    clock[0] += 3 * 3600  # the search was interrupted for three hours, then resumed from tuner.pkl
    restored = pickle.loads(pickle.dumps(reporter))
    clock[0] += 5
    assert clock[0] - restored._start == 5


def test_a_reporter_pickled_by_an_older_version_still_reports(capsys, monkeypatch):
    """tuner.pkl of an interrupted search holds the reporter as the older code pickled it (its whole __dict__,
    without fields added since): the resumed search must report, not crash on a missing attribute."""
    import pickle

    import tune.progress as progress

    reporter = progress.ProgressReporter(max_epochs=3, num_samples=2, metric_columns={"epoch": "epoch"})
    old = pickle.loads(pickle.dumps(reporter))
    old_state = {k: v for k, v in old.__dict__.items() if k not in ("_caveat", "_init_args")}
    restored = progress.ProgressReporter.__new__(progress.ProgressReporter)
    restored.__setstate__(old_state)

    class Trial:  # what our report() reads of a Tune trial (Ray's own table is not under test here)
        status, last_result = "RUNNING", {"epoch": 1, "time_total_s": 60.0}

    monkeypatch.setattr(progress.tune.CLIReporter, "report", lambda self, *args: None)
    restored.report([Trial()], False)
    assert "time left: at most about" in capsys.readouterr().out
    again = pickle.loads(pickle.dumps(restored))
    assert again._max_epochs == 3 and again._caveat == "; ASHA shortens it"
