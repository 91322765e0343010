"""The search's progress lines (tune/progress.py): elapsed time, an upper-bound estimate of the time left that
counts down and is not doubled on resume, in-epoch progress from the training loop's hook, and the table's status
and location cells."""

from __future__ import annotations

import pytest

from types import SimpleNamespace

from tune.progress import ProgressReporter, TrialClock, estimate_seconds_left


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
        trial_id, status, last_result = "t", "RUNNING", {"epoch": 1, "time_total_s": 60.0}

    monkeypatch.setattr(progress.tune.CLIReporter, "_progress_str", lambda self, *args, **kwargs: "")
    restored.report([Trial()], False)
    monkeypatch.setattr(progress.ProgressReporter, "_read_progress", lambda self, ids: {})
    restored.report([Trial()], False)
    assert "time left: at most about" in capsys.readouterr().out
    again = pickle.loads(pickle.dumps(restored))
    assert again._max_epochs == 3 and again._caveat == "; ASHA shortens it"


class _Trial(SimpleNamespace):
    """What Tune's table and our reporter read of a trial."""

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def _trial(tid, status="RUNNING", **result):
    return _Trial(trial_id=tid, status=status, last_result=dict(result), config={"model.dim": 16},
                  temporary_state=SimpleNamespace(location="?"), local_experiment_path="/x", error_file=None,
                  run_metadata=SimpleNamespace(num_failures=0))


def test_the_estimate_counts_down_between_results():
    """No new result between two tables: the running trials' time since their last result counts as done, so the
    estimate falls by the wall time between the tables (it repeated the same figure 13 s apart)."""
    running = [TrialClock("RUNNING", 1, 100.0, since_result=s) for s in (10.0, 10.0)]
    later = [TrialClock("RUNNING", 1, 100.0, since_result=s) for s in (23.0, 23.0)]
    first = estimate_seconds_left(running, max_epochs=3, num_samples=2, concurrency=2)
    assert first == pytest.approx((2 * 200 - 20) / 2)
    assert estimate_seconds_left(later, 3, 2, 2) == pytest.approx(first - 13)
    # a trial that overran its estimate adds nothing, never a negative time
    assert estimate_seconds_left([TrialClock("RUNNING", 2, 200.0, since_result=500.0)], 3, 1, 1) == 0.0


def test_the_first_epochs_progress_gives_an_estimate_before_any_epoch_ends():
    clocks = [TrialClock("RUNNING", 0, 0.0, since_result=60.0, epoch_seconds=240.0), TrialClock("PENDING", 0, 0.0)]
    # 240 s per epoch, 3 epochs per trial, 4 trials, 2 at once; the running one has 60 s done
    assert estimate_seconds_left(clocks, max_epochs=3, num_samples=4, concurrency=2) == pytest.approx(
        (3 * 240 - 60 + 3 * 3 * 240) / 2)


def test_status_lines_show_in_epoch_progress_and_count_down(monkeypatch):
    import tune.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    reporter = ProgressReporter(max_epochs=2, num_samples=2, concurrency=2)
    trials = [_trial("a_00000"), _trial("a_00001")]
    clock[0] += 60
    published = {"a_00000": {"epoch": 1, "done": 2500, "total": 10000, "seconds": 50.0, "time": clock[0] - 2},
                 "a_00001": {"epoch": 1, "done": 5000, "total": 10000, "seconds": 50.0, "time": clock[0] - 2}}
    first = reporter.status_lines(trials, published, clock[0])
    assert first[0].startswith("elapsed 0:01:00; time left: at most about")
    assert "from the first epoch's progress" in first[0]
    assert first[1] == "in epoch: a_00000 25% of epoch 1 (50 examples/s), a_00001 50% of epoch 1 (100 examples/s)"
    clock[0] += 14  # the next table, nothing new published
    second = reporter.status_lines(trials, published, clock[0])
    left = [line.split("about ")[1].split(" ")[0] for line in (first[0], second[0])]
    h, m, s_ = (int(x) for x in left[0].split(":"))
    h2, m2, s2 = (int(x) for x in left[1].split(":"))
    assert (h * 3600 + m * 60 + s_) - (h2 * 3600 + m2 * 60 + s2) == 14, left
    # progress left by an earlier driver (before this reporter started) or of an epoch already reported is ignored
    stale = {"a_00000": {"epoch": 1, "done": 10, "total": 100, "seconds": 1.0, "time": 900.0}}
    assert len(reporter.status_lines(trials, stale, clock[0])) == 1


def test_a_resumed_search_is_not_estimated_at_half_its_concurrency(monkeypatch):
    """On resume every unfinished trial is PENDING at the first table: the estimate used 1 trial at once then."""
    import pickle

    import tune.progress as progress

    monkeypatch.setattr(progress.tune.CLIReporter, "_progress_str", lambda self, *args, **kwargs: "")
    monkeypatch.setattr(progress.ProgressReporter, "_read_progress", lambda self, ids: {})
    reporter = pickle.loads(pickle.dumps(ProgressReporter(max_epochs=4, num_samples=2, concurrency=2)))
    pending = [_trial(t, "PENDING", epoch=2, time_total_s=200.0, training_iteration=2) for t in ("a", "b")]
    (line,) = reporter.status_lines(pending, {}, reporter._start)
    assert "about 0:03:20" in line  # 2 trials x 2 epochs x 100 s, 2 at once


def test_table_says_finished_or_stopped_early_and_blanks_a_dead_drivers_location(monkeypatch):
    """Tune's TERMINATED covers trials that trained every epoch and trials ASHA stopped; the table tells them apart
    (and shows the loss of both). A resumed trial's location is the dead driver's worker until it reports again."""
    from ray.tune.progress_reporter import _trial_progress_str

    import tune.progress as progress

    monkeypatch.setattr(progress.time, "time", lambda: 2000.0)
    reporter = ProgressReporter(max_epochs=3, num_samples=4)
    where = {"node_ip": "10.0.0.9", "pid": 15176, "train_loss": 1.5, "val_mrr_sum": 0.2}
    trials = [_trial("d", "TERMINATED", epoch=3, final=1, timestamp=2001, **where),
              _trial("c", "TERMINATED", epoch=1, timestamp=2001, **{**where, "val_mrr_sum": 0.1}),
              _trial("r", "RUNNING", epoch=1, timestamp=1500, **where),  # its result came from the last driver
              _trial("n", "RUNNING", epoch=2, timestamp=2001, **where)]
    text = _trial_progress_str([reporter._shown(t) for t in trials], {"train_loss": "loss"}, {"model.dim": "dim"},
                               total_samples=4, force_table=True, metric="val_mrr_sum", mode="max",
                               sort_by_metric=True)
    shown = progress.relabel_statuses(text, {str(t): progress.shown_status(t) for t in trials})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in shown.splitlines() if line.startswith("| trial_")}
    assert rows["trial_d"] == ["FINISHED", "10.0.0.9:15176", "16", "1.5"], shown
    assert rows["trial_c"][0] == "STOPPED_EARLY"
    assert progress.shown_status(_trial("p", "TERMINATED")) == "NOT_RUN"  # ended before its first result
    assert rows["trial_r"][:2] == ["RUNNING", ""] and rows["trial_n"][:2] == ["RUNNING", "10.0.0.9:15176"], shown
    assert "Number of trials: 4/4 (1 FINISHED, 2 RUNNING, 1 STOPPED_EARLY)" in shown
    widths = {len(line) for line in shown.splitlines() if line.startswith(("+", "|"))}
    assert len(widths) == 1, shown  # the widened status column keeps the table aligned


def test_the_training_loop_calls_a_reporters_progress_hook(synthetic_dataset, monkeypatch):
    from dpgdiff.training import loop, train
    from tests.test_train import tiny

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)
    calls = []

    class Reporter:
        wants_checkpoint = False

        def __call__(self, epoch, metrics, checkpoint_dir):
            calls.append(("epoch end", epoch))

        def progress(self, epoch, done, total, seconds):
            calls.append((epoch, done, total, seconds))

    train(tiny(**{"train.epochs": 1, "train.batch_size": 64}), synthetic_dataset, reporter=Reporter(), test=False)
    hooks = [c for c in calls if c[0] != "epoch end"]
    n = len(synthetic_dataset.training_examples("last"))
    assert hooks and calls[-1] == ("epoch end", 1)
    assert [c[1] for c in hooks] == sorted({c[1] for c in hooks}) and hooks[-1][1] == n
    assert all(c[0] == 1 and c[2] == n and c[3] >= 0 for c in hooks)


def test_a_search_bounded_by_its_budget_only_shows_the_budget_not_a_trial_count_estimate(monkeypatch):
    import tune.progress as progress
    from tune.budget import UNTIL_BUDGET

    monkeypatch.setattr(progress.time, "time", lambda: 1000.0)
    reporter = ProgressReporter(max_epochs=2, num_samples=UNTIL_BUDGET, concurrency=2)
    lines = reporter.status_lines([_trial("a_00000")], {}, 1060.0)
    assert lines[0].startswith("elapsed 0:01:00; trials start until the time budget is spent"), lines


def test_the_best_trial_line_survives_a_parameter_column_the_best_trial_lacks(monkeypatch):
    """The warm-start column: only enqueued trials carry its key, and Tune's "current best trial" line looked every
    parameter column up in the best trial's config (KeyError: 'warm_start', which ended a search on real data)."""
    import tune.progress as progress

    monkeypatch.setattr(progress.time, "time", lambda: 2000.0)
    reporter = ProgressReporter(max_epochs=3, num_samples=4, metric="val_mrr_sum", mode="max",
                                metric_columns={"val_mrr_sum": "val MRR sum"},
                                parameter_columns={"model.dim": "dim", "warm_start": "warm start"},
                                max_column_length=40)  # as tune/tuner.py builds it
    warm_config = {"model.dim": 16, "warm_start": "configs/food_kitchen-cpu/dpgdiff.yaml"}
    warm = _trial("w", "RUNNING", epoch=1, val_mrr_sum=0.10, timestamp=2001, config=warm_config)
    warm.config = warm_config
    cold = _trial("c", "RUNNING", epoch=1, val_mrr_sum=0.20, timestamp=2001,  # the best, sampled by Optuna
                  config={"model.dim": 16})
    text = reporter._progress_str([reporter._shown(t) for t in (warm, cold)], False)
    assert "Current best trial: c" in text and "configs/food_kitchen-cpu/dpgdiff.yaml" in text, text
    assert reporter._shown(warm) is warm, "a trial with every column is shown as it is"


def test_a_resumed_search_on_a_slower_machine_counts_down(monkeypatch):
    """Issue 42 §7: a resume's estimate stalled (23:56 at 1:01, 22:38 at 11:02). Its epochs ran slower than the
    earlier driver's (more load), the estimate kept the earlier pace, and a running trial that outran it added
    nothing until its next result. With this driver's pace (in-epoch progress, then its epoch times), tables 15 s
    apart on a fake clock count down by 15 s for the whole 11 minutes."""
    import pickle

    import tune.progress as progress

    clock = [10_000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    reporter = pickle.loads(pickle.dumps(ProgressReporter(max_epochs=3, num_samples=8, concurrency=2)))
    start, epoch_s = clock[0], 600.0  # the earlier driver's epochs took 200 s each
    done = [_trial(f"t{i}", "TERMINATED", epoch=3, time_total_s=600.0, training_iteration=3, final=True,
                   timestamp=5000) for i in range(4)]
    running = [_trial(f"t{i}", "RUNNING", epoch=1, time_total_s=200.0, training_iteration=1, timestamp=5000)
               for i in (4, 5)]
    left = []
    for step in range(1, 45):
        clock[0] = now = start + 15 * step
        into, epochs_now = (now - start) % epoch_s, int((now - start) // epoch_s)
        for t in running:
            if epochs_now:  # this driver's epochs, reported
                t.last_result.update(epoch=1 + epochs_now, training_iteration=1 + epochs_now,
                                     time_total_s=200.0 + epoch_s * epochs_now, time_this_iter_s=epoch_s,
                                     timestamp=int(start + epoch_s * epochs_now))
        published = {t.trial_id: {"epoch": 2 + epochs_now, "done": int(1000 * into / epoch_s), "total": 1000,
                                  "seconds": into, "time": now} for t in running}
        reporter._note_results(done + running, now)
        line = reporter.status_lines(done + running, published, now)[0]
        h, m, s = map(int, line.split("about ")[1].split(" ")[0].split(":"))
        left.append(3600 * h + 60 * m + s)
    drops = [a - b for a, b in zip(left[4:], left[5:])]  # once the pace of this driver's epoch is seen
    assert all(abs(d - 15) <= 1 for d in drops), left
