"""End-to-end search: one small search (real dpgdiff.train, smoke space, tiny synthetic data) that several
tests examine (Tune results, MLflow parent/child runs, artifacts, report.py), plus an all-trials-fail search.

Trials sampled with model.xt_injection=add report a NaN validation metric (tests.test_search_stubs) and
must end errored in Tune and FAILED in MLflow while the search goes on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.busy import scaled
from tests.test_search_helpers import mlflow_runs, run, search_args, tracking_uri, tune_trials

pytestmark = pytest.mark.slow
# pytest -n: the tests of the module-scoped `search` run on one worker, so that search runs once.
ON_SEARCH_WORKER = pytest.mark.xdist_group("search_fixture")
NAME = "e2e"
N_TRIALS = 4


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    result = run(search_args(tmp, NAME, "--epochs", "2", "--num-samples", str(N_TRIALS), "--max-concurrent", "2",
                             "--seed", "3", train_fn="train_nan_when_add"), tmp)
    return tmp, result


def _explain(result) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


@ON_SEARCH_WORKER
def test_search_succeeds_and_prints_best_trial(search):
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    out = result.stdout
    assert "search space" in out and "fingerprint" in out  # space summary and dataset card before Ray
    assert "Best trial" in out and "| metric | val X | val Y | test X | test Y |" in out
    assert "| mrr |" in out and "| mrr_sum |" in out


@ON_SEARCH_WORKER
def test_tune_trials_and_mlflow_runs_agree(search):
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    trials = tune_trials(tmp, NAME)
    assert len(trials) == N_TRIALS
    parent, children = mlflow_runs(tmp, NAME)
    assert parent.info.status == "FINISHED"
    by_trial = {c.data.tags["dpgdiff.trial_id"]: c for c in children}
    assert len(children) == N_TRIALS and set(by_trial) == {t.trial_id for t in trials}, "one child run per trial"
    # the Optuna trial numbers (what Optuna's plots show): 0..N-1, in the tag and the run name
    numbers = sorted(int(c.data.tags["dpgdiff.optuna_trial"]) for c in children)
    assert numbers == list(range(N_TRIALS))
    assert all(c.info.run_name.startswith(f"trial_{int(c.data.tags['dpgdiff.optuna_trial']):03d}_") for c in children)
    # the parent holds the full base config once; a trial logs only what it sampled
    assert parent.data.params["train.epochs"] == "2" and parent.data.params["eval.n_negatives"] == "99"
    assert "model.dim" not in parent.data.params  # searched: differs per trial
    n_failed = 0
    for t in trials:
        run_ = by_trial[t.trial_id]
        sampled = json.loads(run_.data.tags["dpgdiff.sampled"])
        assert run_.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run_.data.tags["model.name"] == "dpgdiff"
        assert run_.data.params == {k: str(v) for k, v in sampled.items()}
        # only meaningful metrics are logged, and no trial is tested
        assert not [k for k in run_.data.metrics if k.startswith("config") or k in ("pid", "done", "training_iteration")]
        if sampled["model.xt_injection"] == "add":
            n_failed += 1
            assert t.status == "ERROR"
            assert run_.info.status == "FAILED"
            assert "non-finite" in run_.data.tags["error"] and "val_mrr_sum" in run_.data.tags["error"]
        else:
            assert t.status == "TERMINATED"
            assert run_.info.status == "FINISHED"  # also when ASHA stopped it: tagged, not KILLED
            stopped = not (t.last_result or {}).get("final")
            assert (run_.data.tags.get("dpgdiff.stopped_early") == "1") == stopped
            assert ("mlflow.note.content" in run_.data.tags) == stopped
            assert "model.lambda_u" not in sampled  # conditional parameter only under xt_injection=add
    assert 0 < n_failed < N_TRIALS, "seed 3 should sample both xt_injection values; pick another seed"


@ON_SEARCH_WORKER
def test_finished_runs_have_epoch_history_and_only_the_selected_trial_test_metrics(search):
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(tmp))
    parent, children = mlflow_runs(tmp, NAME)
    finished = [c for c in children if c.info.status == "FINISHED" and "dpgdiff.stopped_early" not in c.data.tags]
    assert finished, "no trial finished"
    for c in finished:
        history = client.get_metric_history(c.info.run_id, "val_mrr_sum")
        assert [m.step for m in history] == [1, 2], "one value per evaluation, step = epoch"
        best_epoch = int(c.data.tags["best_epoch"])
        best_value = max(m.value for m in history)
        assert [m.step for m in history if m.value == best_value][0] == best_epoch
        assert math.isclose(c.data.metrics["best_val_mrr_sum"], best_value)
        assert [m.step for m in client.get_metric_history(c.info.run_id, "infer_ms")] == [1, 2]
    # the parent's best trial is the finished trial with the best validation value; it alone is tested
    best = max(finished, key=lambda c: c.data.metrics["best_val_mrr_sum"])
    assert parent.data.tags["best_run_id"] == best.info.run_id and best.data.tags["dpgdiff.selected"] == "1"
    tested = [c for c in children if any(k.startswith("test_") for k in c.data.metrics)]
    assert [c.info.run_id for c in tested] == [best.info.run_id]
    test = client.get_metric_history(best.info.run_id, "test_mrr_sum")
    assert [m.step for m in test] == [int(best.data.tags["best_epoch"])] and 0 <= test[0].value <= 2
    # the parent's summary metrics are search_*: none collides with a trial's metric name
    assert math.isclose(parent.data.metrics["search_best_val_mrr_sum"], best.data.metrics["best_val_mrr_sum"])
    assert math.isclose(parent.data.metrics["search_best_test_mrr_sum"], test[0].value)
    assert parent.data.metrics["search_n_trials"] == N_TRIALS
    assert all(k.startswith("search_") for k in parent.data.metrics)
    assert f"MLflow run {best.info.run_id}" in result.stdout
    assert "Tested the selected trial" in result.stdout


@ON_SEARCH_WORKER
def test_parent_run_artifacts(search):
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    parent, _ = mlflow_runs(tmp, NAME)
    root = Path(parent.info.artifact_uri.replace("file://", ""))
    assert root.is_relative_to(tmp / "mlruns" / "artifacts")
    for rel in ("search_space.yaml", "dataset_card.json", "trials.csv", "trials.md", "optuna_history.png",
                "best/config.yaml", "best/metrics.json", "best/checkpoint/best.pt", "best/checkpoint/config.yaml",
                "best/test_ranks.npz", "config.yaml"):
        assert (root / rel).is_file(), f"missing parent artifact {rel}"
    assert (root / "optuna_history.png").read_bytes()[:4] == b"\x89PNG"
    csv = (root / "trials.csv").read_text().splitlines()
    assert len(csv) == N_TRIALS + 1 and "val_mrr_sum" in csv[0]
    # trials.csv says what the MLflow UI shows: the run's status, and whether ASHA stopped it early
    import csv as csv_module

    by_run = {c.info.run_id: c for c in mlflow_runs(tmp, NAME)[1]}
    for row in csv_module.DictReader((root / "trials.csv").read_text().splitlines()):
        run_ = by_run[row["run_id"]]
        assert row["status"] == run_.info.status
        assert (row["stopped_early"] == "1") == (run_.data.tags.get("dpgdiff.stopped_early") == "1")
    params = parent.data.params
    assert params["dataset"] == "synthetic" and params["seed"] == "3" and len(params["dataset.fingerprint"]) == 64
    from dpgdiff.config import Config

    assert Config.from_yaml(root / "best" / "config.yaml").train.epochs == 2


@ON_SEARCH_WORKER
def test_report_prints_best_trials_and_table1(search, capsys):
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    from tune import report

    out_file = tmp / "table1.md"
    assert report.main(["--name", NAME, "--tracking-uri", tracking_uri(tmp), "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    parent, children = mlflow_runs(tmp, NAME)
    best = parent.data.tags["best_run_id"]
    assert f"## Search {NAME}" in printed and best in printed
    table = out_file.read_text()
    assert "| Data | Metric | DPG-Diff [1] |" in table
    assert "| X | MRR |" in table and "| Y | MRR |" in table and "|  | H@10 |" in table
    # every cell traceable to a run id, and the footnote says which DPG-Diff the run is
    assert f"[1] DPG-Diff (full): run {best}" in table
    assert report.main(["--name", "nope", "--tracking-uri", tracking_uri(tmp)]) == 2
    err = capsys.readouterr().err
    assert "no search named 'nope'" in err and NAME in err


@ON_SEARCH_WORKER
def test_search_registers_the_best_model_as_dpgdiff_dataset_at_its_search_alias(search):
    """Issue 13 §1: after a search, its registered model predicts top-k in the dataset's own ids. Issue 27 §1: the
    smoke space measures with 99 negatives, so the model is tagged with that protocol, served as
    @search-<name>, and never takes @best (tests/test_serving.py: which version holds @best)."""
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    import mlflow
    import pandas as pd

    from tune.names import PROTOCOL_TAG, STANDARD_TAG

    parent, _ = mlflow_runs(tmp, NAME)
    client = mlflow.MlflowClient(tracking_uri(tmp))
    version = client.get_model_version_by_alias("dpgdiff-synthetic", f"search-{NAME}")
    assert version.tags["source_run_id"] == parent.info.run_id
    assert float(version.tags["dpgdiff.metric_value"]) == pytest.approx(parent.data.metrics["search_best_val_mrr_sum"])
    assert version.tags[PROTOCOL_TAG].startswith("n_negatives=99,") and version.tags[STANDARD_TAG] == "0"
    assert version.tags["dataset.fingerprint"] == parent.data.tags["dataset.fingerprint"]
    assert "best" not in client.get_registered_model("dpgdiff-synthetic").aliases
    assert (f"Registered the best model as version 1 of 'dpgdiff-synthetic' (models:/dpgdiff-synthetic/1), alias "
            f"@search-{NAME} (this search's model); the alias @best stays where it was (measured with n_negatives=99"
            in result.stdout), result.stdout[-3000:]
    assert f"The commands below serve @search-{NAME} " in result.stdout
    assert f"models serve -m models:/dpgdiff-synthetic@search-{NAME} " in result.stdout
    mlflow.set_tracking_uri(tracking_uri(tmp))
    model = mlflow.pyfunc.load_model(f"models:/dpgdiff-synthetic@search-{NAME}")
    out = model.predict(pd.DataFrame({"history": [[1, 2, 160]], "domain": ["y"], "k": [5]}))
    items = list(out["items"][0])
    assert len(items) == 5 and all(150 <= i < 300 for i in items) and 160 not in items  # TINY_DATA: 150 + 150 items


@ON_SEARCH_WORKER
def test_resuming_a_finished_search_changes_nothing(search):
    """Issue 27 §2: --resume of a FINISHED search is a no-op that says so: no parent metric is logged again,
    search_wall_s keeps the search's time, no run is reopened or added."""
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(tmp))
    parent, children = mlflow_runs(tmp, NAME)
    history = {k: len(client.get_metric_history(parent.info.run_id, k)) for k in parent.data.metrics}
    resumed = run(search_args(tmp, NAME, "--resume", train_fn="train_nan_when_add"), tmp)
    assert resumed.returncode == 0, _explain(resumed)
    assert f"search {NAME!r} finished already" in resumed.stdout and "nothing changed" in resumed.stdout
    after, children_after = mlflow_runs(tmp, NAME)
    assert after.info.status == "FINISHED" and after.data.metrics == parent.data.metrics
    assert {k: len(client.get_metric_history(parent.info.run_id, k)) for k in after.data.metrics} == history
    assert sorted(c.info.run_id for c in children_after) == sorted(c.info.run_id for c in children)
    assert [c.info.status for c in children_after] == [c.info.status for c in children]
    from tune.budget import read_drivers

    drivers = read_drivers(str(tmp / "ray_results" / NAME))
    assert len(drivers) == 1 and parent.data.metrics["search_wall_s"] == pytest.approx(drivers[0]["wall_s"])


def test_every_trial_failing_exits_nonzero_with_first_error(tmp_path):
    """Also: --max-failures retries a trial, and failed trials are FAILED in MLflow with the error text."""
    result = run(search_args(tmp_path, "allfail", "--epochs", "1", "--num-samples", "2", "--max-failures", "1",
                             "--scheduler", "fifo", train_fn="train_always_fails"),
                 tmp_path)
    assert result.returncode == 1, _explain(result)
    assert "every trial failed" in result.stderr and "ValueError: stub failure" in result.stderr
    assert "Best trial" not in result.stdout
    trials = tune_trials(tmp_path, "allfail")
    assert len(trials) == 2 and all(t.status == "ERROR" for t in trials)
    assert all(t.run_metadata.num_failures == 2 for t in trials), "one retry per trial (--max-failures 1)"
    parent, children = mlflow_runs(tmp_path, "allfail")
    assert parent.info.status == "FAILED"
    assert len(children) == 2 and all(c.info.status == "FAILED" for c in children)
    assert all("stub failure" in c.data.tags["error"] for c in children)


def test_without_max_concurrent_tune_fills_the_slots_and_asks_the_study_for_num_samples_trials(tmp_path):
    """Issue 41: without --max-concurrent the search's limit is the trials that fit (4 slots of 1 CPU here), given to
    Tune as max_concurrent_trials, so that Tune keeps that many trials pending and not one at a time. Tune then
    wraps the searcher in a ConcurrencyLimiter (saved with its state); the limit above --num-samples must not make
    the searcher ask Optuna for more trials than --num-samples, and every trial's end reaches the limiter (none
    left live: a resume would wait on it)."""
    import pickle

    import optuna

    from tests.test_search_helpers import assert_study_agrees_with_mlflow

    result = run(search_args(tmp_path, "slots", "--epochs", "1", "--num-samples", "3", "--num-cpus", "4",
                             "--scheduler", "fifo"), tmp_path, timeout=400)  # 3 trials at once on 2 cores
    assert result.returncode == 0, _explain(result)
    assert "room for 4 trial(s) at once" in result.stdout
    trials = tune_trials(tmp_path, "slots")
    assert len(trials) == 3 and all(t.status == "TERMINATED" for t in trials)
    states = sorted((tmp_path / "ray_results" / "slots").glob("search_gen_state-*.json"))
    assert len(states) == 1, states
    limiter = pickle.loads(states[0].read_bytes()).get("name:ConcurrencyLimiter")  # Tune's pickle, named .json
    assert limiter is not None, "Tune ran the searcher without a ConcurrencyLimiter: one trial pending at a time"
    assert limiter["max_concurrent"] == 4 and not limiter["live_trials"], limiter
    assert assert_study_agrees_with_mlflow(tmp_path, "slots") == set()  # one study trial per run, none extra
    study = optuna.load_study(study_name="slots", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert len(study.trials) == 3, [t.state for t in study.trials]


@ON_SEARCH_WORKER
def test_confirm_reruns_the_best_configuration_with_seeds_as_tracked_children(search, capsys):
    """Issue 10 §2: tune/confirm.py reruns the best trial's configuration with N seeds (and a variant) as Ray
    trials, tracked as confirmation children of the search's parent run, and the report pairs them."""
    tmp, result = search
    assert result.returncode == 0, _explain(result)
    from mlflow.tracking import MlflowClient

    from dpgdiff.config import Config
    from tests.test_search_helpers import CONFIRM
    from tune import report, tracking

    configs = tmp / "configs"
    args = [*CONFIRM, "--name", NAME, "--seeds", "2", "--variant", "no-cl:model.tri_cl=false", "--quiet",
            "--storage-path", str(tmp / "ray_results"), "--tracking-uri", tracking_uri(tmp),
            "--write-configs", str(configs)]
    confirmed = run(args, tmp)
    assert confirmed.returncode == 0, _explain(confirmed)
    assert "4 confirmation trial(s): 4 finished, 0 failed" in confirmed.stdout
    client = MlflowClient(tracking_uri(tmp))
    parent, trials = mlflow_runs(tmp, NAME)
    assert len(trials) == N_TRIALS, "confirmation runs are not search trials"
    best = client.get_run(parent.data.tags["best_run_id"])
    runs = tracking.child_runs(client, parent.info.experiment_id, parent.info.run_id, role="confirmation")
    assert sorted((r.data.tags["dpgdiff.variant"], r.data.tags["dpgdiff.seed"]) for r in runs) == [
        ("best", "1"), ("best", "2"), ("no-cl", "1"), ("no-cl", "2")]
    import yaml

    def full_config(run_id: str) -> dict:
        return yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(tmp))).read_text())

    reference = full_config(best.info.run_id)
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["dpgdiff.confirms_run"] == best.info.run_id
        config = full_config(r.info.run_id)
        assert config["train"]["seed"] == int(r.data.tags["dpgdiff.seed"])
        assert config["model"]["tri_cl"] == (r.data.tags["dpgdiff.variant"] == "best")
        read = Config.from_yaml(Path(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp)))).fields_read()
        for section, values in reference.items():  # the best trial's configuration, but for seed and variant
            for key, value in values.items():
                if (section, key) in (("train", "seed"), ("model", "tri_cl")):
                    continue
                if key not in config.get(section, {}):  # a field the variant switches off (no Tri-CL: augment.*)
                    assert f"{section}.{key}" not in read and r.data.tags["dpgdiff.variant"] == "no-cl", key
                    continue
                assert config[section][key] == value, f"{section}.{key}"
        assert 0 <= r.data.metrics["test_mrr_sum"] <= 2
        assert 0 <= r.data.metrics["test_k1_y_ndcg10"] <= 1  # RQ4: the test pass at K = 1 (and 2, 4, 8 <= T)
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"test_ranks.npz", "config.yaml", "final.json"} <= names
    exported = Config.from_yaml(configs / "dpgdiff.yaml")
    assert exported.model.dim == int(best.data.params["model.dim"]) and exported.train.epochs == 2
    # the file says which DPG-Diff it is, and lists only what the model reads
    assert (configs / "dpgdiff.yaml").read_text().startswith(f"# variant: {exported.label()}\n")
    assert best.data.tags["dpgdiff.label"] == exported.label()
    # the report adds the confirmed table (mean ± std over both seeds) and the variant table with paired tests
    out_file = tmp / "confirmed.md"
    assert report.main(["--name", NAME, "--tracking-uri", tracking_uri(tmp), "--out", str(out_file)]) == 0
    text = out_file.read_text()
    assert "## Confirmed comparison" in text and "mean ± std over seeds [1, 2]" in text
    assert "## Ablations of search e2e" in text and "| no-cl | 2 |" in text
    # --variant: Table 1's column is a confirmed variant (as when an ablation becomes the committed file)
    no_cl = sorted(r.info.run_id for r in runs if r.data.tags["dpgdiff.variant"] == "no-cl")
    assert report.main(["--name", NAME, "--variant", f"{NAME}=no-cl", "--tracking-uri", tracking_uri(tmp),
                        "--out", str(out_file)]) == 0
    table1 = out_file.read_text().split("## Ablations")[0]
    # its column says what the variant is (its runs' label), the footnote which variant it was
    assert "DPG-Diff (−Tri-CL) [1]" in table1 and "variant no-cl (--variant" in table1
    assert all(run_id in table1 for run_id in no_cl)
    assert not [r for r in runs if r.data.tags["dpgdiff.variant"] == "best" and r.info.run_id in table1]
    for variant, message in ((f"{NAME}=nope", "no confirmed variant 'nope' (confirmed: best, no-cl"),
                             ("other=no-cl", "search 'other' is not reported"), (NAME, "expected SEARCH=VARIANT")):
        assert report.main(["--name", NAME, "--variant", variant, "--tracking-uri", tracking_uri(tmp)]) == 2
        assert message in capsys.readouterr().err
    # confirming the same seeds again is refused; with --write-configs it writes the files and runs nothing;
    # resuming the finished confirmation reruns nothing
    again = run([a for a in args if a not in ("--write-configs", str(configs))], tmp)
    assert again.returncode == 2 and "confirmed already" in again.stderr, _explain(again)
    written = (configs / "dpgdiff.yaml").read_text()
    (configs / "dpgdiff.yaml").unlink()
    rewritten = run(args, tmp)
    assert rewritten.returncode == 0 and "shows them: nothing to run" in rewritten.stdout, _explain(rewritten)
    assert (configs / "dpgdiff.yaml").read_text() == written
    resumed = run([*CONFIRM, "--confirm-name", f"confirm-{NAME}", "--resume", "--quiet", "--storage-path",
                   str(tmp / "ray_results"), "--tracking-uri", tracking_uri(tmp)], tmp)
    assert resumed.returncode == 0 and "4 confirmation trial(s): 4 finished" in resumed.stdout, _explain(resumed)
    assert len(tracking.child_runs(client, parent.info.experiment_id, parent.info.run_id, role="confirmation")) == 4

    # --trial: another trial than the best (by its Optuna number), its own confirmation; the report shows either
    other = next(r for r in trials if r.info.run_id != best.info.run_id and r.info.status == "FINISHED")
    number = other.data.tags["dpgdiff.optuna_trial"]
    chosen = run([*CONFIRM, "--trial", f"{NAME}:{number}", "--seeds", "1", "--quiet", "--storage-path",
                  str(tmp / "ray_results"), "--tracking-uri", tracking_uri(tmp), "--write-configs", str(tmp / "t")], tmp)
    assert chosen.returncode == 0 and "1 confirmation trial(s): 1 finished" in chosen.stdout, _explain(chosen)
    (t_run,) = [r for r in tracking.child_runs(client, parent.info.experiment_id, parent.info.run_id,
                                              role="confirmation") if r.data.tags["dpgdiff.confirms_run"] != best.info.run_id]
    assert t_run.data.tags["dpgdiff.confirms_run"] == other.info.run_id
    assert full_config(t_run.info.run_id)["model"] == full_config(other.info.run_id)["model"]
    assert f"trial {number}, named with tune/confirm.py --trial" in (tmp / "t" / "dpgdiff.yaml").read_text()
    assert report.main(["--name", NAME, "--trial", f"{NAME}:{number}", "--tracking-uri", tracking_uri(tmp),
                        "--out", str(out_file)]) == 0
    text = out_file.read_text()
    assert t_run.info.run_id in text and f"trial {number} (--trial" in text and "seeds [1]" in text
    assert not [r for r in runs if r.info.run_id in text], "the best trial's runs are not mixed in"
    assert report.main(["--name", NAME, "--tracking-uri", tracking_uri(tmp), "--out", str(out_file)]) == 0
    assert t_run.info.run_id not in out_file.read_text() and "seeds [1, 2]" in out_file.read_text()
    bad = run([*CONFIRM, "--trial", f"{NAME}:999", "--quiet", "--storage-path", str(tmp / "ray_results"),
               "--tracking-uri", tracking_uri(tmp)], tmp)
    assert bad.returncode == 2 and "no trial runs of search" in bad.stderr, _explain(bad)


@pytest.mark.parametrize("argv, message", [
    (["--name", "nope"], "no such search"),
    (["--name", "x", "--seeds", "0"], "--seeds must be >= 1"),
    (["--name", "x", "--variant", "nolabel"], "expected LABEL:section.key=value"),
    (["--trial", "x"], "expected SEARCH:TRIAL"),
    (["--trial", "nope:3"], "no such search"),
    ([], "--name"),
])
def test_confirm_bad_input_exits_2_before_ray(tmp_path, mlflow_store, capsys, argv, message):
    from tune import confirm, tracking

    tracking.ensure_experiment(tracking.client_for(mlflow_store), "dpgdiff", None)
    rc = confirm.main([*argv, "--tracking-uri", mlflow_store, "--storage-path", str(tmp_path)])
    assert rc == 2 and message in capsys.readouterr().err


@ON_SEARCH_WORKER
def test_mlflow_server_shows_the_search_as_a_user_would_find_it(search, tmp_path):
    """Issue 13 §4: `mlflow server` on the search's SQLite store; its REST API has the parent, the trials with
    their Optuna numbers and early-stop tags, the registered model, and the runs the printed UI link filters to."""
    import sys
    import urllib.parse
    import urllib.request

    from tests.test_search_helpers import free_port, kill_session, start_http_server
    from tune.parent_run import search_filter

    tmp, result = search
    assert result.returncode == 0, _explain(result)
    parent, children = mlflow_runs(tmp, NAME)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_http_server([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri(tmp),
                              "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], tmp_path,
                             f"{base}/health", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner

    def call(path: str, payload: dict | None = None, **query) -> dict:
        url = f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=scaled(30)) as response:
            return json.loads(response.read().decode())

    try:
        from tune.endpoints import not_mlflow

        assert not_mlflow(base) is None  # issue 42: the protocol check that refuses other servers takes this one
        exp_id = call("experiments/get-by-name", experiment_name="dpgdiff")["experiment"]["experiment_id"]
        # the runs list the printed link opens: the parent and every trial of this search
        found = call("runs/search", {"experiment_ids": [exp_id], "filter": search_filter(NAME), "max_results": 100})
        runs = {r["info"]["run_id"]: r for r in found["runs"]}
        confirmations = {rid for rid, r in runs.items()  # tune/confirm.py's reruns, when that test ran first
                         if {"key": "dpgdiff.role", "value": "confirmation"} in r["data"].get("tags", [])}
        assert set(runs) - confirmations == {parent.info.run_id} | {c.info.run_id for c in children}
        link = f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
        assert link in result.stdout, result.stdout[-3000:]
        # the list link: MLflow 3's runs route (the only one whose query the UI honours), this search's filter
        from tune.parent_run import runs_list_query

        assert f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?{runs_list_query(NAME)}" in result.stdout
        experiment = call("experiments/get", experiment_id=exp_id)["experiment"]
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]

        def tags(run: dict) -> dict:
            return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

        parent_rest = runs[parent.info.run_id]
        assert parent_rest["info"]["status"] == "FINISHED" and tags(parent_rest)["dpgdiff.role"] == "search"
        metric_names = {m["key"] for m in parent_rest["data"]["metrics"]}
        assert "search_best_val_mrr_sum" in metric_names and not metric_names & {"best_val_mrr_sum", "val_mrr_sum"}
        trials = [r for r in runs.values() if tags(r).get("dpgdiff.role") == "trial"]
        assert len(trials) == N_TRIALS
        assert sorted(int(tags(r)["dpgdiff.optuna_trial"]) for r in trials) == list(range(N_TRIALS))
        for r in trials:
            t = tags(r)
            assert t["mlflow.parentRunId"] == parent.info.run_id
            assert r["info"]["status"] in ("FINISHED", "FAILED")  # never KILLED after a search that ended
            if t.get("dpgdiff.stopped_early") == "1":
                assert r["info"]["status"] == "FINISHED" and t["dpgdiff.stopped_by"] == "scheduler"
                assert "ASHA" in t["mlflow.note.content"]
        # the registered model, the version of this search's alias made from its parent run
        model = call("registered-models/get", name="dpgdiff-synthetic")["registered_model"]
        best_alias = [a for a in model.get("aliases", []) if a["alias"] == f"search-{NAME}"]
        assert best_alias, model
        version = call("model-versions/get", name="dpgdiff-synthetic", version=best_alias[0]["version"])
        assert version["model_version"]["run_id"] == parent.info.run_id
    finally:
        kill_session(proc.pid)
    assert proc.wait(timeout=30) is not None  # stopped (wait: a process that has just exited may not be reaped yet)


def test_two_objective_search_prints_and_tags_its_pareto_front(tmp_path):
    """Issue 13 §3: --objectives val_mrr_sum,infer_ms runs FIFO, saves the objectives for a resume, prints the
    Pareto front and tags exactly the non-dominated trials (checked here from the runs' own metrics)."""
    name = "pareto"
    result = run(search_args(tmp_path, name, "--objectives", "val_mrr_sum,infer_ms", "--epochs", "1",
                             "--num-samples", "3", "--max-concurrent", "2", "--seed", "5",
                             "--set", "model.xt_injection=concat_token"), tmp_path)
    assert result.returncode == 0, _explain(result)
    assert "ASHA ranks trials on one metric" in result.stdout and "Pareto front (" in result.stdout
    saved = json.loads((tmp_path / "ray_results" / name / "dpgdiff_search.json").read_text())
    assert saved["objectives"] == ["val_mrr_sum", "infer_ms"] and saved["scheduler"] == "fifo"
    parent, children = mlflow_runs(tmp_path, name)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert not [c for c in children if "dpgdiff.stopped_early" in c.data.tags]
    points = {c.info.run_id: (c.data.metrics["best_val_mrr_sum"], c.data.metrics["infer_ms"]) for c in children}

    def dominated(p, by):  # val: higher is better; infer_ms: lower is better
        return by[0] >= p[0] and by[1] <= p[1] and by != p

    front = {rid for rid, p in points.items() if not any(dominated(p, q) for q in points.values())}
    tagged = {c.info.run_id for c in children if c.data.tags.get("dpgdiff.pareto") == "1"}
    assert tagged == front and front
    for rid in front:  # printed: trial, both values, MLflow run
        line = next(ln for ln in result.stdout.splitlines() if ln.endswith(f"| {rid} |"))
        assert f"{points[rid][0]:.4f}" in line and f"{points[rid][1]:.4f}" in line
    root = Path(parent.info.artifact_uri.replace("file://", ""))
    assert (root / "optuna_pareto_front.png").read_bytes()[:4] == b"\x89PNG"
    assert parent.data.params["objectives"] == "val_mrr_sum,infer_ms"
    assert parent.data.metrics["search_n_pareto"] == len(front)
