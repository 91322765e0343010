"""Resume after a late kill (issue 11 §1), MLflow side, without Ray: the run of a trial that Tune's restored state
does not hold is closed KILLED, leaves the search's trial runs and points at the run that replaced it; a final
result reported again after a restart is logged once."""

from __future__ import annotations

import pickle

from tests.test_tracking import SPACE, _trial, store  # noqa: F401 (store: the fixture)
from tune import tracking


def test_a_lost_trials_run_is_closed_and_points_at_its_replacement(store):  # noqa: F811
    uri, client, exp, parent = store
    tracker = tracking.MLflowTrialTracker(uri, exp, parent, "s1", SPACE)
    kept, lost, other_lost = _trial("kept"), _trial("lost", 32), _trial("gone", 16)
    other_lost.config["model.dropout"] = 0.25  # a configuration nobody proposes again
    for t in (kept, lost, other_lost):
        tracker.on_trial_start(0, [], t)
        tracker.on_trial_result(0, [], t, {"epoch": 1, "val_mrr_sum": 0.1})

    # the driver is killed; Tune restores "kept" only, and its searcher proposes lost's configuration again
    resumed = pickle.loads(pickle.dumps(tracker))
    again = _trial("again", 32)
    for t in (kept, again):
        resumed.on_trial_start(0, [], t)
        final = {"epoch": 2, "best_epoch": 2, "final": 1, "val_mrr_sum": 0.2, "test_mrr_sum": 0.3}
        resumed.on_trial_result(0, [], t, {"epoch": 2, "val_mrr_sum": 0.2})
        resumed.on_trial_result(0, [], t, final)
        t.last_result, t.status = final, "TERMINATED"
        resumed.on_trial_complete(0, [], t)
    resumed.reconcile([kept, again])

    trial_runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(client, exp, parent)}
    assert sorted(trial_runs) == ["again", "kept"], "one trial run per trial Tune holds"
    lost_runs = {r.data.tags[tracking.TRIAL_TAG]: r
                 for r in tracking.child_runs(client, exp, parent, tracking.ROLE_LOST)}
    assert sorted(lost_runs) == ["gone", "lost"]
    assert all(r.info.status == "KILLED" for r in lost_runs.values()), "no run stays RUNNING"
    assert lost_runs["lost"].data.tags[tracking.REPLACED_BY_TAG] == trial_runs["again"].info.run_id
    assert trial_runs["again"].info.run_id in lost_runs["lost"].data.tags["dpgdiff.lost"]
    assert tracking.REPLACED_BY_TAG not in lost_runs["gone"].data.tags
    assert {r.info.status for r in trial_runs.values()} == {"FINISHED"}


def test_a_final_result_reported_again_after_a_restart_is_logged_once(store):  # noqa: F811
    uri, client, exp, parent = store
    tracker = tracking.MLflowTrialTracker(uri, exp, parent, "s1", SPACE)
    t = _trial("a")
    final = {"epoch": 2, "best_epoch": 2, "final": 1, "val_mrr_sum": 0.2, "test_mrr_sum": 0.3}
    tracker.on_trial_start(0, [], t)
    tracker.on_trial_result(0, [], t, final)
    tracker.on_trial_result(0, [], t, final)  # the same session
    restarted = pickle.loads(pickle.dumps(tracker))  # a killed driver: the trial reruns from its checkpoint
    restarted.on_trial_start(0, [], t)
    restarted.on_trial_result(0, [], t, final)
    run_id = tracker.run_id(t, create=False)
    for key in ("test_mrr_sum", "best_epoch"):
        assert len(client.get_metric_history(run_id, key)) == 1, key


def test_a_new_sqlite_store_appears_whole_or_not_at_all(tmp_path):
    """MLflow builds a new store in many steps; a driver killed among them must not leave a half-built store that
    every later start refuses ("table ... already exists"). It is built aside and linked into place."""
    import sqlite3

    db = tmp_path / "mlflow.db"
    (tmp_path / ".mlflow.db.x.creating").write_bytes(b"half a store")  # a creation killed earlier: ignored
    client = tracking.client_for(f"sqlite:///{db}")
    assert db.is_file() and [f.name for f in tmp_path.glob("*.creating")] == [".mlflow.db.x.creating"]
    tables = {name for (name,) in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
    assert {"runs", "experiments", "alembic_version"} <= tables
    exp = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(f"sqlite:///{db}"))
    client.create_run(exp)
    tracking.create_sqlite_store(f"sqlite:///{db}")  # an existing store is left as it is
    assert len(tracking.client_for(f"sqlite:///{db}").search_runs([exp])) == 1
