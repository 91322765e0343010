"""MLflowTrialTracker without Ray: trial -> run by tag survives a driver restart (pickled callback),
metrics are filtered and logged once per epoch, and statuses follow how trials end."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from tune import tracking
from tune.space import parse_space

SPACE = parse_space({"params": {"model.dim": {"type": "categorical", "values": [16, 32]}}}, source="inline")


def _trial(tid: str, dim: int = 16, status: str = "RUNNING", last: dict | None = None, number: int | None = None):
    config = {"model.dim": dim, **({"optuna_trial": number} if number is not None else {})}
    return SimpleNamespace(trial_id=tid, config=config, status=status, last_result=last or {},
                           custom_dirname=f"trial_{tid}", run_metadata=SimpleNamespace(num_failures=0),
                           get_error=lambda: "Traceback ...\nValueError: boom", error_file=None)


@pytest.fixture
def store(mlflow_store):
    uri = mlflow_store
    client = tracking.client_for(uri)
    exp = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(uri))
    parent, reopened = tracking.start_parent_run(client, exp, "s1", {})
    assert not reopened and client.get_experiment(exp).artifact_location.endswith("mlruns/artifacts")
    return uri, client, exp, parent


def test_trial_runs_survive_restart_and_end_with_the_right_status(store):
    uri, client, exp, parent = store
    tracker = tracking.MLflowTrialTracker(uri, exp, parent, "s1", SPACE)
    a, b, c = _trial("a", number=0), _trial("b", 32, number=1), _trial("c", number=2)
    for t in (a, b, c):
        tracker.on_trial_start(0, [], t)
    noise = {"config/model.dim": 16, "pid": 1, "done": False, "training_iteration": 1, "time_total_s": 1.0}
    tracker.on_trial_result(0, [], a, {"epoch": 1, "train_loss": 2.0, "val_mrr_sum": 0.1, **noise})
    tracker.on_trial_result(0, [], b, {"epoch": 1, "train_loss": 2.0, "val_mrr_sum": 0.3, **noise})

    # driver restart: Tune unpickles the callback; nothing in memory survives but the tags in MLflow
    restarted = pickle.loads(pickle.dumps(tracker))
    assert restarted._runs == {} and restarted._client is None
    restarted.on_trial_start(0, [], a)
    restarted.on_trial_result(0, [], a, {"epoch": 1, "val_mrr_sum": 0.1})  # repeated epoch: not logged again
    restarted.on_trial_result(0, [], a, {"epoch": 2, "val_mrr_sum": 0.2, "infer_ms": 12.5})
    final = {"epoch": 2, "best_epoch": 2, "final": 1, "val_mrr_sum": 0.2, "infer_ms": 12.5}
    restarted.on_trial_result(0, [], a, final)
    a.last_result, a.status = final, "TERMINATED"
    restarted.on_trial_complete(0, [], a)
    b.last_result, b.status = {"epoch": 1, "val_mrr_sum": 0.3}, "TERMINATED"
    restarted.on_trial_complete(0, [], b)  # stopped by the scheduler
    c.status = "ERROR"
    restarted.on_trial_error(0, [], c)

    children = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(client, exp, parent)}
    assert sorted(children) == ["a", "b", "c"], "one run per trial, none duplicated by the restart"
    ra, rb, rc = children["a"], children["b"], children["c"]
    # stopped by ASHA: FINISHED (not a failure), tagged and described; only a failure is FAILED
    assert (ra.info.status, rb.info.status, rc.info.status) == ("FINISHED", "FINISHED", "FAILED")
    assert "ValueError: boom" in rc.data.tags["error"]
    assert rb.data.tags["dpgdiff.stopped_by"] == "scheduler" and rb.data.tags["dpgdiff.stopped_early"] == "1"
    assert "Stopped early by the ASHA scheduler after epoch 1" in rb.data.tags["mlflow.note.content"]
    assert "dpgdiff.stopped_early" not in ra.data.tags
    # only the sampled parameters are params; the resolved config is the artifact config.yaml, listing the fields
    # its model reads, so that `python -m dpgdiff train --config` takes it as it is
    assert ra.data.params == {"model.dim": "16"} and rb.data.params == {"model.dim": "32"}
    assert ra.data.tags["model.name"] == "dpgdiff"
    import yaml

    from dpgdiff.config import Config, model_reads

    artifact = client.download_artifacts(ra.info.run_id, "config.yaml")
    saved = yaml.safe_load(open(artifact))
    assert saved["model"]["dim"] == 16 and saved["train"]["lr"] > 0
    assert "c2dsr" not in saved and "abxi" not in saved  # other models' sections
    assert all(model_reads("dpgdiff", f"{s}.{k}") for s, values in saved.items() for k in values)
    assert Config.from_yaml(artifact).model.dim == 16
    # the Optuna trial number: tag and run name
    assert [r.data.tags[tracking.OPTUNA_TAG] for r in (ra, rb, rc)] == ["0", "1", "2"]
    assert rb.info.run_name == "trial_001_b"
    assert [(m.step, m.value) for m in client.get_metric_history(ra.info.run_id, "val_mrr_sum")] == [(1, 0.1), (2, 0.2)]
    assert [m.step for m in client.get_metric_history(ra.info.run_id, "infer_ms")] == [2]
    assert not [k for k in ra.data.metrics if k.startswith("test_")]
    assert ra.data.metrics["best_val_mrr_sum"] == 0.2 and ra.data.tags["best_epoch"] == "2"
    assert not [k for k in ra.data.metrics if k.startswith("config") or k in ("pid", "done", "time_total_s")]

    # a resumed search reopens its parent run instead of making a second one
    again, reopened = tracking.start_parent_run(client, exp, "s1", {})
    assert reopened and again == parent


def test_a_tracker_pickled_by_an_older_version_gets_every_field_on_restore(store):
    """tuner.pkl of an interrupted search holds the tracker as the older code pickled it (its whole __dict__,
    without fields added since): the resumed search must track, not crash on a missing attribute."""
    uri, client, exp, parent = store
    tracker = tracking.MLflowTrialTracker(uri, exp, parent, "s1", SPACE, role="confirmation")
    old_state = {k: v for k, v in tracker.__dict__.items() if k not in ("_final_logged", "role")}
    restored = tracking.MLflowTrialTracker.__new__(tracking.MLflowTrialTracker)
    restored.__setstate__(old_state)
    assert restored._final_logged == set() and restored.role == "trial" and restored.parent_run_id == parent
    a = _trial("a", number=0)
    restored.on_trial_start(0, [], a)
    restored.on_trial_result(0, [], a, {"epoch": 1, "best_epoch": 1, "final": 1, "val_mrr_sum": 0.1})
    again = pickle.loads(pickle.dumps(tracker))
    assert again.role == "confirmation" and again._client is None and again._runs == {}


def test_reconcile_closes_runs_of_interrupted_trials(store):
    uri, client, exp, parent = store
    tracker = tracking.MLflowTrialTracker(uri, exp, parent, "s1", SPACE)
    t = _trial("x")
    tracker.on_trial_start(0, [], t)
    tracker.on_experiment_end([t])  # e.g. a driver stopping with the trial still RUNNING in Tune
    (run,) = tracking.child_runs(client, exp, parent)
    assert run.info.status == "KILLED" and run.data.tags["dpgdiff.interrupted"] == "1"
    assert "before its first epoch ended" in run.data.tags["mlflow.note.content"]


def test_ctrl_c_then_resume_labels_each_run_by_what_its_trial_did(store):
    """Ctrl-C: Tune marks its in-flight trials TERMINATED in memory without calling on_trial_complete, then calls
    on_experiment_end. Those runs are interrupted (KILLED), not stopped early; the trial ASHA did stop is. A resume
    reopens the interrupted runs and drops their labels; trained to the last epoch, a run is FINISHED, unlabelled."""
    uri, client, exp, parent = store
    tracker = tracking.MLflowTrialTracker(uri, exp, parent, "s1", SPACE)
    a, b, c = _trial("a", number=0), _trial("b", 32, number=1), _trial("c", number=2)
    for t in (a, b, c):
        tracker.on_trial_start(0, [], t)
        tracker.on_trial_result(0, [], t, {"epoch": 1, "val_mrr_sum": 0.1})
        t.last_result = {"epoch": 1, "val_mrr_sum": 0.1}
    c.status = "TERMINATED"
    tracker.on_trial_complete(0, [], c)  # ASHA stopped c at its first rung
    a.status = b.status = "TERMINATED"  # Ctrl-C: Tune's cleanup, no complete hook
    tracker.on_experiment_end([a, b, c])

    def runs():
        return {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(client, exp, parent)}

    first = runs()
    for tid in "ab":
        run = first[tid]
        assert run.info.status == "KILLED" and run.data.tags["dpgdiff.interrupted"] == "1", run.data.tags
        assert "dpgdiff.stopped_early" not in run.data.tags and "dpgdiff.stopped_by" not in run.data.tags
        assert run.data.tags["mlflow.note.content"].startswith("Interrupted after epoch 1")
    assert first["c"].info.status == "FINISHED" and first["c"].data.tags["dpgdiff.stopped_early"] == "1"
    assert "dpgdiff.interrupted" not in first["c"].data.tags

    # resume: Tune unpickles the tracker and restarts a and b from their checkpoints; a runs to its last epoch,
    # ASHA stops b at its next rung
    resumed = pickle.loads(pickle.dumps(tracker))
    for t in (a, b):
        t.status = "RUNNING"
        resumed.on_trial_start(0, [], t)
    reopened = runs()
    for tid in "ab":
        assert reopened[tid].info.status == "RUNNING"
        assert not set(tracking.STALE_TAGS) & set(reopened[tid].data.tags), reopened[tid].data.tags
    resumed.on_trial_result(0, [], a, {"epoch": 2, "val_mrr_sum": 0.2})
    final = {"epoch": 2, "best_epoch": 2, "final": 1, "val_mrr_sum": 0.2}
    resumed.on_trial_result(0, [], a, final)
    a.last_result, a.status = final, "TERMINATED"
    resumed.on_trial_complete(0, [], a)
    b.last_result, b.status = {"epoch": 2, "val_mrr_sum": 0.05}, "TERMINATED"
    resumed.on_trial_complete(0, [], b)
    resumed.on_experiment_end([a, b, c])

    end = runs()
    assert end["a"].info.status == "FINISHED"
    assert not set(tracking.STALE_TAGS) & set(end["a"].data.tags), end["a"].data.tags
    assert end["b"].info.status == "FINISHED" and end["b"].data.tags["dpgdiff.stopped_early"] == "1"
    assert "after epoch 2" in end["b"].data.tags["mlflow.note.content"] and "dpgdiff.interrupted" not in end["b"].data.tags
    assert end["c"].info.status == "FINISHED" and end["c"].data.tags["dpgdiff.stopped_early"] == "1"


def test_a_trial_whose_final_result_came_just_before_ctrl_c_is_finished_not_interrupted(store):
    """The race CI met: Ctrl-C lands after a trial's final report but before Tune processed its end (no complete
    hook). It trained every epoch, so its run is FINISHED with no interrupted label; the in-flight trial is KILLED.
    A resume replays that final report (tune/trainable.py) and must not log it twice or relabel the run."""
    uri, client, exp, parent = store
    tracker = tracking.MLflowTrialTracker(uri, exp, parent, "s1", SPACE)
    done, flying = _trial("d", number=0), _trial("f", 32, number=1)
    final = {"epoch": 2, "best_epoch": 2, "final": 1, "val_mrr_sum": 0.2}
    for t, last in ((done, final), (flying, {"epoch": 1, "val_mrr_sum": 0.1})):
        tracker.on_trial_start(0, [], t)
        tracker.on_trial_result(0, [], t, last)
        t.last_result, t.status = last, "TERMINATED"  # Ctrl-C: Tune's cleanup, no complete hook for either
    tracker.on_experiment_end([done, flying])

    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(client, exp, parent)}
    assert runs["d"].info.status == "FINISHED", runs["d"].data.tags
    assert not set(tracking.STALE_TAGS) & set(runs["d"].data.tags), runs["d"].data.tags
    assert runs["f"].info.status == "KILLED" and runs["f"].data.tags["dpgdiff.interrupted"] == "1"

    resumed = pickle.loads(pickle.dumps(tracker))
    done.status = "RUNNING"
    resumed.on_trial_start(0, [], done)
    resumed.on_trial_result(0, [], done, final)  # the replayed final report
    done.status = "TERMINATED"
    resumed.on_trial_complete(0, [], done)
    run = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(client, exp, parent)}["d"]
    assert run.info.status == "FINISHED" and not set(tracking.STALE_TAGS) & set(run.data.tags)
    assert len(client.get_metric_history(run.info.run_id, "best_epoch")) == 1, "final metrics logged once"


def test_first_error_line():
    text = "Traceback (most recent call last):\n  File x\nray.exceptions.RayTaskError: ...\n  File y\nValueError: boom\n"
    assert tracking.first_error_line(text) == "ValueError: boom"


def test_reports_go_beside_the_store_they_read(tmp_path):
    from tune.report import reports_dir

    assert reports_dir(f"sqlite:///{tmp_path}/other/mlflow.db") == tmp_path / "other" / "reports"
    assert reports_dir((tmp_path / "files").as_uri()) == tmp_path / "files" / "reports"
    assert reports_dir("http://127.0.0.1:5000") == Path("reports")


def test_printed_links_use_mlflow_3s_runs_route_and_the_experiment_is_model_training(store):
    """MLflow 3.17 ignores the query of `#/experiments/<id>?...` (no filter, sorted by date); under
    `#/experiments/<id>/runs?...` it lists the search's runs flat, sorted as asked."""
    from urllib.parse import parse_qs, urlsplit

    from tune.parent_run import search_filter, ui_links

    uri, client, exp, parent = store
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(exp, "mlflow.experimentKind", "genai_development")  # a user's choice stays
    assert tracking.ensure_experiment(client, "dpgdiff", None) == exp
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "genai_development"

    parent_line, list_line = ui_links("7", "abc123", "fk-1").splitlines()
    assert parent_line.split()[-1] == "http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning"
    fragment = urlsplit(list_line.split()[-1]).fragment
    route, query = fragment.split("?", 1)
    assert route == "/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "searchFilter": [search_filter("fk-1")],
                               "orderByKey": ["metrics.`best_val_mrr_sum`"], "orderByAsc": ["false"]}
