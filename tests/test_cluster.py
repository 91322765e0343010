"""A search on an existing two-node Ray cluster (head + worker on 127.0.0.1, 1 CPU each, own temp dirs).

Checks: `--address` shakes hands with the cluster's GCS (and a wrong token is named), joins the cluster (token auth,
search-notes) and runs trials on both nodes at once.
Asking for GPUs or CPUs no node has is an error before any trial starts (checked on a fake cluster). Both nodes are
started with `ray start` in their own sessions and stopped by PID (never `ray stop`, which kills by name).
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tests.test_search_helpers import (LoopbackCluster, generate_ray_token, mlflow_runs, run, search_args,
                                       tune_trials)

# pytest -n: the modules that start clusters with `ray start --head` (tests/test_cluster.py, tests/test_node_loss.py)
# run on one worker, one after the other: a head node binds fixed default ports (the Ray client server's 10001).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_start_head")]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    # The README recipe from a new machine: the head's token is made with `ray get-auth-token --generate`,
    # then every node and the launching machine use that file (here through RAY_AUTH_TOKEN_PATH).
    token = generate_ray_token(tmp_path / "head_home")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    nodes = LoopbackCluster(tmp_path, token)
    try:
        nodes.start_head()
        nodes.add_worker()
        yield nodes.address
    finally:
        nodes.stop()


def test_search_on_two_node_cluster(tmp_path, cluster, monkeypatch):
    result = run(search_args(tmp_path, "cluster", "--address", cluster, "--num-samples", "2", "--epochs", "2",
                             "--max-concurrent", "2", "--scheduler", "fifo"), tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert re.search(rf"Ray cluster [0-9a-f]{{12}} at {re.escape(cluster)}: answered in [0-9.]+ s", result.stdout), \
        "the search did not shake hands with the cluster's GCS before joining it"
    assert "Ray: 2 node(s), 2 CPU" in result.stdout
    # The same handshake with a token that is not the head's: named before Ray starts (ray.init would wait)
    from tune.endpoints import check_address
    from tune.errors import SearchError

    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    wrong.chmod(0o600)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(wrong))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(SearchError, match=f"--address {cluster}: the Ray cluster there refused this machine's auth "
                                          "token"):
        check_address(cluster)
    trials = tune_trials(tmp_path, "cluster")
    assert len(trials) == 2 and all(t.status == "TERMINATED" for t in trials)
    # 1 CPU per node and 1 CPU per trial: the two trials overlapping in time ran on different nodes.
    spans = []
    for t in trials:
        df = pd.read_csv(tmp_path / "ray_results" / "cluster" / f"trial_{t.trial_id}" / "progress.csv")
        spans.append((df["timestamp"].min() - df["time_this_iter_s"].iloc[0], df["timestamp"].max()))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, f"trials did not run at the same time: {spans}"
    parent, children = mlflow_runs(tmp_path, "cluster")
    assert parent.info.status == "FINISHED" and len(children) == 2


class _FakeRay:
    """What _check_resources reads from ray: two live CPU-only nodes."""

    @staticmethod
    def nodes():
        return [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 2.0}},
                {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]

    @staticmethod
    def cluster_resources():
        return {"CPU": 6.0}


@pytest.mark.parametrize("cpu, gpu, ok", [(4, 0, True), (2, 0, True), (5, 0, False), (1, 0.5, False), (1, 1, False)])
def test_resources_the_cluster_lacks_are_an_error_before_trials(cpu, gpu, ok, capsys):
    from types import SimpleNamespace

    from tune.ray_start import check_resources as _check_resources
    from tune.settings import SearchError

    state = SimpleNamespace(cpus_per_trial=cpu, gpus_per_trial=gpu)  # the SearchSettings fields it reads
    if ok:
        _check_resources(_FakeRay, state)
        assert "2 node(s), 6 CPU, 0 GPU" in capsys.readouterr().out
    else:
        with pytest.raises(SearchError, match="no node of the cluster has that") as err:
            _check_resources(_FakeRay, state)
        assert "node 0: 4 CPU, 0 GPU; node 1: 2 CPU, 0 GPU" in str(err.value)
