"""A worker node dies in the middle of a search (issue 11 §5).

A two-node loopback cluster (tests/test_search_helpers.LoopbackCluster: head + worker, 1 CPU each) runs a search
of 2 trials at once, so one trial runs on each node. While the worker's trial runs (it has reported at least one
epoch, hence saved a checkpoint), the worker node's raylet is SIGKILLed, by PID (found in the worker's `ray start`
session): the node is lost, with its trial. The stub trainer (tests.test_search_stubs.train_slow) appends every
epoch it trains to a file, with the process and node that trained it.

- `--max-failures 2`: the trial continues from its last checkpoint on the head once the head's trial is done, and
  no epoch is trained twice but the one in flight; MLflow keeps one run for it, FINISHED, tagged
  `dpgdiff.retries=1`; exit 0.
- `--max-failures 0`: the trial ends FAILED, its error names the lost node (Ray's node id), the other trial
  finishes, and the search exits 0 (the exit code is 1 only when every trial failed, tune/search.py).

Each case starts a fresh worker node on the same head: 85-100 s each on the shared 2-core machine at load
average 7-8 (the full suite), most of it the driver's start and the trials' 4 epochs.
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
from tests.test_search_helpers import (LoopbackCluster, env, generate_ray_token, kill_session, mlflow_runs,
                                       node_processes, search_args, session_pids, trial_results, tune_trials)
from tests.test_search_stubs import EPOCH_LOG_ENV

# pytest -n: the modules that start clusters with `ray start --head` (tests/test_cluster.py, tests/test_node_loss.py)
# run on one worker, one after the other: a head node binds fixed default ports (the Ray client server's 10001).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_start_head")]
EPOCHS = 4


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The cluster's head node (token auth, the README recipe); each test adds its own worker node."""
    tmp = tmp_path_factory.mktemp("node_loss")
    token = generate_ray_token(tmp / "head_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))  # the search joins with the head's token
        nodes = LoopbackCluster(tmp, token, {EPOCH_LOG_ENV: str(tmp / "epochs.log")})
        try:
            nodes.start_head()
            yield nodes
        finally:
            nodes.stop()


def _epochs_trained(log: Path) -> list[tuple[str, int, int, str, float]]:
    """(trial id, epoch, pid, node id, time) per epoch trained, from the stub's log."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        trial, epoch, pid, node, at = line.split()
        rows.append((trial, int(epoch), int(pid), node, float(at)))
    return rows


def lose_the_worker(head: LoopbackCluster, name: str, max_failures: int) -> dict:
    """Start a worker node, run a 2-trial search on the cluster, SIGKILL the worker's raylet once its trial has
    reported an epoch; wait for the search to end -> what happened."""
    tmp = head.folder
    worker = head.add_worker()
    args = search_args(tmp, name, "--address", head.address, "--num-samples", "2", "--epochs", str(EPOCHS),
                       "--max-concurrent", "2", "--scheduler", "fifo", "--max-failures", str(max_failures),
                       "--set", "model.xt_injection=concat_token", train_fn="train_slow")
    log = tmp / f"{name}.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(args, cwd=tmp, env=env(), stdout=handle, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        deadline, lost = time.time() + 300, None
        while lost is None:
            assert proc.poll() is None, f"the search ended (rc {proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.time() < deadline, f"no trial reported on the worker node:\n{log.read_text()[-4000:]}"
            on_worker = set(session_pids(worker))
            for trial_dir in (tmp / "ray_results" / name).glob("trial_*"):
                results = [r for r in trial_results(trial_dir) if not r.get("final")]
                if results and results[-1].get("pid") in on_worker and results[-1]["epoch"] < EPOCHS:
                    lost = trial_dir.name.removeprefix("trial_")
            time.sleep(0.1)
        raylets = node_processes(worker, "raylet")
        assert len(raylets) == 1, f"expected one raylet in the worker's session: {raylets}"
        os.kill(raylets[0], signal.SIGKILL)
        killed_at = time.time()
        try:
            proc.wait(timeout=scaled(400))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the search did not end after the node loss:\n{log.read_text()[-4000:]}")
        trained = [row for row in _epochs_trained(tmp / "epochs.log") if row[0] == lost]
        worker_node = {row[3] for row in trained if row[4] < killed_at}
        return {"rc": proc.returncode, "out": log.read_text(), "lost": lost,
                "killed_at": killed_at, "trained": trained, "worker_node": worker_node, "tmp": tmp}
    finally:
        kill_session(proc.pid)
        kill_session(worker)  # what is left of the lost node


def test_a_trial_on_a_lost_node_continues_from_its_checkpoint(head):
    got = lose_the_worker(head, "retried", max_failures=2)
    out, lost, trained, tmp = got["out"], got["lost"], got["trained"], got["tmp"]
    assert got["rc"] == 0, out[-4000:]
    trials = {t.trial_id: t for t in tune_trials(tmp, "retried")}
    assert len(trials) == 2 and all(t.status == "TERMINATED" for t in trials.values()), out[-3000:]
    # The lost node's trial process can outlive its raylet by a moment and finish (and report) the epoch in
    # flight: what counts is the last epoch the lost node reported, whenever that was.
    results = [r for r in trial_results(tmp / "ray_results" / "retried" / f"trial_{lost}") if not r.get("final")]
    assert len(got["worker_node"]) == 1, f"trained: {trained}"
    last_on_worker = max(r["epoch"] for r in results if r.get("node_id") in got["worker_node"])
    on_worker = [epoch for _, epoch, _, node, _ in trained if node in got["worker_node"]]
    retry = [(epoch, at) for _, epoch, _, node, at in trained if node not in got["worker_node"]]
    # the retry ran on the remaining node, after the kill, from the lost node's last checkpoint
    assert retry and all(at >= got["killed_at"] for _, at in retry), f"trained: {trained}"
    assert min(e for e, _ in retry) == last_on_worker + 1, f"not resumed from epoch {last_on_worker}: {trained}"
    epochs = sorted(on_worker + [e for e, _ in retry])
    twice = [e for e in set(epochs) if epochs.count(e) > 1]
    assert set(epochs) == set(range(1, EPOCHS + 1)) and len(twice) <= 1, f"epochs trained: {epochs}"
    assert all(e == last_on_worker + 1 for e in twice), f"only the epoch in flight may train twice: {trained}"
    assert [r["epoch"] for r in results] == list(range(1, EPOCHS + 1)), f"each epoch reported once: {results}"
    parent, children = mlflow_runs(tmp, "retried")
    assert parent.info.status == "FINISHED"
    runs = {c.data.tags["dpgdiff.trial_id"]: c for c in children}
    assert sorted(runs) == sorted(trials), "one run per trial"
    assert {c.info.status for c in children} == {"FINISHED"}
    assert runs[lost].data.tags.get("dpgdiff.retries") == "1"
    # what the node loss cost (printed for the README): Ray's notice, the wait for a free CPU, the restart
    kill = got["killed_at"]
    error_text = (tmp / "ray_results" / "retried" / f"trial_{lost}" / "error.txt").read_text()
    stamp = re.search(r"occurred at (\S+)\)", error_text).group(1)  # Tune's local time, to the second
    noticed = time.mktime(time.strptime(stamp, "%Y-%m-%d_%H-%M-%S")) - kill
    other_done = max(at for trial, _, _, _, at in _epochs_trained(tmp / "epochs.log") if trial != lost) - kill
    restart = min(at for _, _, _, _, at in trained if at >= kill) - kill
    print(f"\nnode loss: Tune saw the trial fail {noticed:.0f} s (+-1) after the raylet was killed; the head's trial "
          f"trained its last epoch at +{other_done:.1f} s; the lost trial trained its next epoch at +{restart:.1f} s")


def test_without_retries_the_trial_fails_naming_the_lost_node(head):
    got = lose_the_worker(head, "failed", max_failures=0)
    out, lost, tmp = got["out"], got["lost"], got["tmp"]
    assert got["rc"] == 0, f"one trial finished: exit 0\n{out[-4000:]}"
    trials = {t.trial_id: t for t in tune_trials(tmp, "failed")}
    assert trials[lost].status == "ERROR"
    assert [t.status for tid, t in trials.items() if tid != lost] == ["TERMINATED"], "the rest of the search ran"
    parent, children = mlflow_runs(tmp, "failed")
    runs = {c.data.tags["dpgdiff.trial_id"]: c for c in children}
    assert runs[lost].info.status == "FAILED"
    (node,) = got["worker_node"]
    error = runs[lost].data.tags.get("error", "")
    assert node in error, f"the error does not name the lost node {node}:\n{error}"
    assert parent.info.status == "FINISHED"


def test_the_node_note_names_the_node_a_trial_last_reported_from():
    from tune.tracking import node_note

    note = node_note({"node_id": "ab12", "node_ip": "10.0.0.7", "epoch": 2})
    assert note == "the trial last ran on Ray node ab12 (10.0.0.7)"  # no Ray connected here: not known dead
    assert node_note({"epoch": 2}) == "", "a result without a node id (another trainable) adds nothing"
