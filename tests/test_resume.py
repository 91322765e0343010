"""Interrupt and resume a search: Ctrl-C (exit 130, says how to resume), then resume to the end. Tune must hold
exactly the planned trials, finished trials must not rerun, and MLflow must hold one child run per trial with none
left RUNNING. (SIGKILLs of the driver at random times: tests/test_local_ray.py.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.busy import scaled
from tests.test_search_helpers import (
    REPORT,
    assert_study_agrees_with_mlflow,
    env,
    kill_session,
    kill_when_file_appears,
    mlflow_runs,
    run,
    search_args,
    trial_results,
    tracking_uri,
    tune_trials,
)

pytestmark = pytest.mark.slow
NAME = "resumable"
N_TRIALS = 3
EPOCHS = 3


def _rows(tmp: Path) -> dict[str, list[dict]]:
    """trial dir name -> its results so far (result.json: one JSON line per tune.report)."""
    out = {}
    for f in (tmp / "ray_results" / NAME).glob("trial_*/result.json"):
        out[f.parent.name] = trial_results(f.parent)
    return out


def _is_final(row: dict) -> bool:
    return bool(row.get("final"))


def _start(tmp: Path, *extra: str, quiet: bool = True) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"driver-{time.time():.0f}.log"
    args = search_args(tmp, NAME, "--epochs", str(EPOCHS), "--num-samples", str(N_TRIALS), "--max-concurrent", "2",
                       "--scheduler", "fifo", "--set", "model.xt_injection=concat_token",
                       *extra, train_fn="train_slow")
    args = args if quiet else [a for a in args if a != "--quiet"]
    e = env()
    e["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # snapshot the experiment often, so what finished is known to the restore
    with log.open("w") as handle:
        proc = subprocess.Popen(args, cwd=tmp, env=e, stdout=handle, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return proc, log


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.time() + scaled(timeout)
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"search exited (rc {proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    kill_session(proc.pid)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def test_ctrl_c_then_resume(tmp_path):
    # 1. Ctrl-C once a trial has finished and another is in flight: the search says it is unfinished and exits 130.
    #    (SIGKILLs of the driver at random times, and the leftovers they leave, are tests/test_local_ray.py's.)
    proc, log = _start(tmp_path, quiet=False)  # the trial table; the resume below is --quiet
    try:
        def finished_and_in_flight() -> bool:
            rows = _rows(tmp_path)
            done = [t for t, r in rows.items() if r and _is_final(r[-1])]
            running = [t for t, r in rows.items() if r and not _is_final(r[-1])]
            return bool(done) and bool(running)

        _wait_for(finished_and_in_flight, proc, log, 240, "one finished and one running trial")
        before = _rows(tmp_path)
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=scaled(90))
    finally:
        kill_session(proc.pid)
    text = log.read_text()
    assert proc.returncode == 130, text[-4000:]
    assert "UNFINISHED" in text and f"--name {NAME}" in text and "--resume" in text
    assert "Best trial" not in text
    assert re.search(r"\b0 stopped early by ASHA, 0 failed, [1-9] interrupted", text), text[-3000:]
    parent, children = mlflow_runs(tmp_path, NAME)
    assert parent.info.status == "KILLED" and parent.data.tags.get("dpgdiff.unfinished") == "1"
    assert children and not [c for c in children if c.info.status == "RUNNING"]
    # 2. Each run says what its trial did: finished, or interrupted (KILLED, a description saying so), never
    #    "stopped early" (FIFO stops none).
    results = _rows(tmp_path)
    for c in children:
        rows = results.get(f"trial_{c.data.tags['dpgdiff.trial_id']}") or []
        tags = c.data.tags
        assert "dpgdiff.stopped_early" not in tags and "dpgdiff.stopped_by" not in tags, tags
        if rows and _is_final(rows[-1]):
            assert c.info.status == "FINISHED" and "dpgdiff.interrupted" not in tags, (c.info.status, tags)
        else:
            assert c.info.status == "KILLED" and tags.get("dpgdiff.interrupted") == "1", (c.info.status, tags)
            assert tags["mlflow.note.content"].startswith("Interrupted"), tags
    assert any(c.info.status == "KILLED" for c in children), "no trial was in flight at the Ctrl-C"
    finished_before = {t for t, r in before.items() if r and _is_final(r[-1])}

    # 3. Resume to the end.
    result = run(search_args(tmp_path, NAME, "--resume", train_fn="train_slow"), tmp_path, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "resuming search" in result.stdout and "Best trial" in result.stdout
    assert "elapsed " in text and "elapsed " not in result.stdout, "--quiet on resume: no trial table (issue 27 §5)"

    trials = tune_trials(tmp_path, NAME)
    assert len(trials) == N_TRIALS, "the searcher state must continue, not propose new trials"
    assert all(t.status == "TERMINATED" for t in trials)
    after = _rows(tmp_path)
    for t in finished_before:  # not retrained: no new epoch rows (a trial whose end Tune had not yet processed at
        # the Ctrl-C replays its final report from its final checkpoint, which adds one final row, not epochs)
        epochs_then = [r for r in before[t] if not _is_final(r)]
        assert [r for r in after[t] if not _is_final(r)] == epochs_then, f"finished trial {t} was retrained"
    parent, children = mlflow_runs(tmp_path, NAME)
    assert parent.info.status == "FINISHED"
    assert "dpgdiff.unfinished" not in parent.data.tags and "error" not in parent.data.tags, parent.data.tags
    assert parent.data.metrics["search_n_finished"] == N_TRIALS and parent.data.metrics["search_n_stopped_early"] == 0
    assert len(children) == N_TRIALS, "exactly one MLflow run per trial after the interruption"
    for c in children:  # every trial trained every epoch: nothing left of the interrupted session's labels
        assert not {"dpgdiff.stopped_early", "dpgdiff.stopped_by", "dpgdiff.interrupted", "mlflow.note.content",
                    "error"} & set(c.data.tags), (c.info.run_id, c.data.tags)
    assert {c.data.tags["dpgdiff.trial_id"] for c in children} == {t.trial_id for t in trials}
    # the Optuna trial numbers survive both restores (saved in each trial's config): 0..N-1, none repeated
    assert sorted(int(c.data.tags["dpgdiff.optuna_trial"]) for c in children) == list(range(N_TRIALS))
    assert all(c.info.status == "FINISHED" for c in children), [c.info.status for c in children]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(tmp_path))
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_mrr_sum")]
        assert steps == list(range(1, EPOCHS + 1)), f"run {c.info.run_id}: epochs logged {steps}"
    # one source of truth for what was sampled: the persistent Optuna study, continued by the resume, agrees with
    # MLflow (and so with Tune) on every trial's number, parameters and value
    assert_study_agrees_with_mlflow(tmp_path, NAME)
    # report.py and the parent's trials.csv agree; the report goes beside the store it read, not into the cwd
    import csv

    with open(client.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path))) as f:
        csv_status = {r["trial_id"]: (r["status"], r["stopped_early"]) for r in csv.DictReader(f)}
    assert csv_status == {t.trial_id: ("FINISHED", "0") for t in trials}, csv_status
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = run([*REPORT, "--name", NAME, "--tracking-uri", tracking_uri(tmp_path)], elsewhere, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"trials: {N_TRIALS} FINISHED\n" in report.stdout, report.stdout[:3000]
    assert (tmp_path / "mlruns" / "reports" / f"{NAME}-table1.md").is_file() and not list(elsewhere.iterdir())
    # issue 27 §2: search_wall_s is the sum over both drivers, not the last one's time
    from tune.budget import read_drivers

    drivers = read_drivers(str(tmp_path / "ray_results" / NAME))
    assert len(drivers) == 2 and all(d["wall_s"] > 0 for d in drivers), drivers
    assert parent.data.metrics["search_wall_s"] == pytest.approx(sum(d["wall_s"] for d in drivers))
    assert parent.data.metrics["search_wall_s"] > max(d["wall_s"] for d in drivers)


def test_a_search_whose_driver_died_before_tunes_first_state_resumes_from_its_settings(tmp_path, capsys):
    """Issue 27 §6: a driver killed in its first seconds leaves dpgdiff_search.json but no Tune state (not even
    tuner.pkl). --resume takes the saved settings (the search starts anew under the same name, build_tuner says
    so) instead of "nothing to resume"."""
    import json

    from tune.search import build_parser
    from tune.settings import STATE_FILE, settings_from_args

    def settings(*argv: str):
        args = build_parser().parse_args(argv)
        args.argv = list(argv)
        return settings_from_args(args)

    first = settings(*search_args(tmp_path, "early", "--epochs", "1")[2:])
    folder = tmp_path / "ray_results" / "early"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps(first.to_saved()))  # what the driver writes before Tune starts
    resumed = settings(*search_args(tmp_path, "early", "--resume")[2:])
    assert resumed.run.resuming and resumed == first
    assert "resuming search 'early'" in capsys.readouterr().out


def test_resume_retry_errored_reruns_failed_trials_from_their_checkpoint(tmp_path):
    """Trials that crashed stay ERROR on a plain resume; `--resume --retry-errored` runs them again from their last
    checkpoint (not from epoch 1) and reopens their MLflow runs, without the stale error tag."""
    from tests.test_search_stubs import FAIL_AT_EPOCH_ENV

    args = search_args(tmp_path, "retry", "--epochs", "2", "--num-samples", "2", "--scheduler", "fifo",
                       "--set", "model.xt_injection=concat_token", train_fn="train_fails_at_epoch_if_env")
    os.environ[FAIL_AT_EPOCH_ENV] = "2"  # run() copies os.environ: the driver and its local Ray see it
    try:
        failed = run(args, tmp_path, timeout=300)
    finally:
        del os.environ[FAIL_AT_EPOCH_ENV]
    assert failed.returncode == 1 and "stub failure at epoch 2" in failed.stderr, failed.stderr[-4000:]
    assert all(t.status == "ERROR" for t in tune_trials(tmp_path, "retry"))
    parent, children = mlflow_runs(tmp_path, "retry")
    assert len(children) == 2 and all(c.info.status == "FAILED" and "error" in c.data.tags for c in children)

    retried = run(search_args(tmp_path, "retry", "--resume", "--retry-errored", train_fn="train_fails_at_epoch_if_env"),
                  tmp_path, timeout=300)
    assert retried.returncode == 0, f"{retried.stdout[-4000:]}\n{retried.stderr[-4000:]}"
    trials = tune_trials(tmp_path, "retry")
    assert len(trials) == 2 and all(t.status == "TERMINATED" for t in trials)
    for t in trials:
        epochs = [r["epoch"] for r in trial_results(tmp_path / "ray_results" / "retry" / f"trial_{t.trial_id}")
                  if "epoch" in r and not r.get("final")]
        assert epochs == [1, 2], f"trial {t.trial_id} reran epoch 1 or skipped one: {epochs}"
    parent, children = mlflow_runs(tmp_path, "retry")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" and "error" not in c.data.tags for c in children)


def test_a_driver_that_raised_says_how_to_resume_and_the_resume_completes(tmp_path):
    """An exception out of tuner.fit() in the driver (here the trial table's, as Tune's best-trial line once
    raised KeyError on the sparse proxy): exit non-zero with the traceback, the parent FAILED with the error, and
    the resume command printed; the resume then runs the search to the end, and the parent is FINISHED without
    the earlier error."""
    from tests.search_with_stub import KILL_AT_ENV

    args = [a for a in search_args(tmp_path, NAME, "--epochs", "1", "--num-samples", str(N_TRIALS),
                                   "--max-concurrent", "1", "--scheduler", "fifo",
                                   "--set", "model.xt_injection=concat_token", train_fn="train_slow")
            if a != "--quiet"]  # the trial table is what raises
    crashed = run(args, tmp_path, timeout=300, extra_env={KILL_AT_ENV: "table"})
    assert crashed.returncode != 0 and "RuntimeError: stub: the trial table failed" in crashed.stderr
    assert "stopped on RuntimeError; its state is saved" in crashed.stderr and "--resume" in crashed.stderr, \
        crashed.stderr[-3000:]
    parent, _ = mlflow_runs(tmp_path, NAME)
    assert parent.info.status == "FAILED" and "stub: the trial table failed" in parent.data.tags["error"]

    resumed = run(search_args(tmp_path, NAME, "--resume", train_fn="train_slow"), tmp_path, timeout=300)
    assert resumed.returncode == 0, f"{resumed.stdout[-4000:]}\n{resumed.stderr[-4000:]}"
    trials = tune_trials(tmp_path, NAME)
    assert len(trials) == N_TRIALS and all(t.status == "TERMINATED" for t in trials)
    parent, children = mlflow_runs(tmp_path, NAME)
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags, parent.data.tags
    assert len(children) == N_TRIALS and all(c.info.status == "FINISHED" for c in children)
    assert_study_agrees_with_mlflow(tmp_path, NAME)


def test_retry_errored_needs_resume(tmp_path):
    result = run(search_args(tmp_path, "x", "--retry-errored"), tmp_path, timeout=120)
    assert result.returncode == 2 and "--retry-errored: only with --resume" in result.stderr, result.stderr[-2000:]


def test_resume_after_a_kill_before_tune_saved_any_state_runs_every_trial(tmp_path):
    """A driver killed after Tune wrote tuner.pkl but before its first experiment state leaves a folder that
    `Tuner.restore` takes as a new run with num_samples = 1 (the resumed search then stopped after one trial,
    "1 not started"). The resume starts such a search's trials anew, and runs all of them."""
    from tune.ray_internals import experiment_state_saved

    for attempt in range(3):  # the kill must land inside a window of about a second: a loaded machine can miss it
        workdir = tmp_path / f"attempt{attempt}"
        workdir.mkdir()
        args = search_args(workdir, "early", "--epochs", "1", "--num-samples", "2", "--max-concurrent", "1",
                           "--scheduler", "fifo", "--set", "model.xt_injection=concat_token", train_fn="train_slow")
        folder = workdir / "ray_results" / "early"
        log = workdir / "killed.log"
        # polled tightly: Tune's first state follows within a second
        kill_when_file_appears(args, workdir, folder / "tuner.pkl", log, timeout=240)
        if not experiment_state_saved(str(folder)):
            break
    assert not experiment_state_saved(str(folder)), "every kill came after Tune's first state: the case was not made"

    result = run(search_args(workdir, "early", "--resume", train_fn="train_slow"), workdir, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "no Tune state was saved" in result.stdout and "its trials start anew" in result.stdout
    trials = tune_trials(workdir, "early")
    assert len(trials) == 2 and all(t.status == "TERMINATED" for t in trials), trials
    parent, children = mlflow_runs(workdir, "early")
    assert parent.info.status == "FINISHED" and len(children) == 2


def test_experiment_state_saved_looks_for_tunes_state_not_tuner_pkl(tmp_path):
    from tune.ray_internals import experiment_state_saved

    assert not experiment_state_saved(str(tmp_path / "missing"))
    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert not experiment_state_saved(str(tmp_path))
    (tmp_path / "experiment_state-2026-11-28_19-37-46.json").write_text("{}")
    assert experiment_state_saved(str(tmp_path))


def test_the_status_lines_show_a_long_epoch_under_way(tmp_path):
    """Issue 25 §3: inside an epoch the driver's status lines say how far each running trial is (examples/s,
    fraction of the epoch, published by the training loop's progress hook through Ray) and estimate the time
    left before any epoch has ended. One trial, one epoch of 38 batches at 0.5 s each (the table: every 15 s)."""
    args = [a for a in search_args(tmp_path, "long", "--epochs", "1", "--num-samples", "1", "--scheduler", "fifo",
                                   "--set", "train.batch_size=16", "--set", "train.mode=last",
                                   "--set", "model.xt_injection=concat_token",
                                   train_fn="train_long_epochs") if a != "--quiet"]
    result = run(args, tmp_path, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    progress = [line for line in result.stdout.splitlines() if line.startswith("in epoch: ")]
    assert progress and re.fullmatch(r"in epoch: \w+ \d+% of epoch 1 \([\d,.]+ examples/s\)", progress[0]), \
        result.stdout[-4000:]
    assert "from the first epoch's progress" in result.stdout, result.stdout[-4000:]
    assert re.search(r"Number of trials: 1/1 \(1 FINISHED\)", result.stdout), result.stdout[-4000:]
    header = next(line for line in reversed(result.stdout.splitlines()) if line.startswith("| Trial name"))
    final = next(line for line in reversed(result.stdout.splitlines()) if line.startswith("| trial_"))
    cells = dict(zip((c.strip() for c in header.split("|")[1:-1]), (c.strip() for c in final.split("|")[1:-1])))
    assert cells["status"] == "FINISHED" and float(cells["loss"]) > 0, cells  # the loss of a trial that ran every epoch
    assert "Token authentication is enabled" not in result.stdout + result.stderr
    assert "A new study created" not in result.stdout + result.stderr
