"""The best model as an MLflow pyfunc model: registry + alias `best`, load + predict, and `mlflow models serve`."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from dpgdiff.config import Config  # noqa: E402
from dpgdiff import train  # noqa: E402
from tests.busy import scaled  # noqa: E402
from tests.test_search_helpers import free_port, kill_session, start_http_server, tracking_uri  # noqa: E402
from tune import tracking  # noqa: E402
from tune.names import VALUE_TAG  # noqa: E402
from tune.serving import BEST_ALIAS, log_best_model, registered_name  # noqa: E402

TINY = ["model.dim=16", "model.n_c_layers=1", "train.epochs=1", "train.mode=last", "train.batch_size=256",
        "train.num_threads=1", "train.device=cpu", "diffusion.sampler=ddim", "diffusion.infer_steps=2",
        "diffusion.val_infer_steps=2"]
NAME = registered_name("synthetic")

# pytest -n: one worker runs this module, so its module-scoped fixture (a training run) runs once.
pytestmark = pytest.mark.xdist_group("serving")


@pytest.fixture(scope="module")
def registry(tmp_path_factory, synthetic_dataset):
    """A tiny trained checkpoint, logged and registered once (version 1, val metric 0.2, @best)."""
    root = tmp_path_factory.mktemp("serving")
    run = root / "run"
    train(Config().with_overrides(TINY), synthetic_dataset, out_dir=run)
    checkpoint = root / "checkpoint"  # what the search attaches: best.pt + config.yaml
    checkpoint.mkdir()
    for name in ("best.pt", "config.yaml"):
        shutil.copy2(run / name, checkpoint / name)
    uri = tracking_uri(root)
    client = tracking.client_for(uri)
    exp = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(uri))
    parent = client.create_run(exp, run_name="search").info.run_id
    first = log_best_model(uri, parent, checkpoint, synthetic_dataset.card().to_dict(), metric_value=0.2)
    mlflow.set_tracking_uri(uri)
    return {"root": root, "uri": uri, "client": client, "parent": parent, "checkpoint": checkpoint,
            "first": first, "dataset": synthetic_dataset}


def test_pyfunc_predicts_top_k_in_the_datasets_ids(registry):
    first, ds = registry["first"], registry["dataset"]
    assert (first.version, first.alias_moved) == ("1", True)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{BEST_ALIAS}")
    nx, ny = ds.items.n_items_x, ds.items.n_items_y
    frame = pd.DataFrame({"history": [[12, 55, nx + 301], [3, 10 ** 7]], "domain": ["y", "x"], "k": [5, 3]})
    out = model.predict(frame)
    assert list(out.columns) == ["items", "scores", "unknown"] and len(out) == 2
    assert len(out["items"][0]) == 5 and all(nx <= i < nx + ny and i != nx + 301 for i in out["items"][0])
    assert len(out["items"][1]) == 3 and all(0 <= i < nx for i in out["items"][1])
    assert list(out["unknown"][1]) == [str(10 ** 7)] and list(out["unknown"][0]) == []
    # the same code path as `python -m dpgdiff recommend`
    from dpgdiff.recommend import Recommender

    direct = Recommender.load(registry["checkpoint"] / "best.pt").recommend([[12, 55, nx + 301]], "y", 5)[0]
    assert list(out["items"][0]) == direct.items
    # k is optional (default 10)
    assert len(model.predict(pd.DataFrame({"history": [[12]], "domain": ["y"]}))["items"][0]) == 10
    with pytest.raises(mlflow.exceptions.MlflowException, match="row 0: empty history"):
        model.predict(pd.DataFrame({"history": [[]], "domain": ["y"], "k": [3]}))

    meta = model.metadata
    assert meta.metadata["dataset_fingerprint"] == ds.fingerprint and meta.metadata["dataset"] == "synthetic"
    assert meta.signature.inputs.input_names() == ["history", "domain", "k"]
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1"))
    card = json.loads(next(local.rglob("dataset_card.json")).read_text())
    assert card["fingerprint"] == ds.fingerprint and next(local.rglob("config.yaml")).is_file()
    assert (local / "input_example.json").is_file() or (local / "serving_input_example.json").is_file()


def _new_parent(registry) -> str:
    """A new search parent run in the module's store (registration is once per parent run)."""
    client = registry["client"]
    return client.create_run(client.get_experiment_by_name("dpgdiff").experiment_id, run_name="search").info.run_id


def test_alias_moves_only_when_the_search_improves(registry):
    client = registry["client"]
    args = (registry["checkpoint"], registry["dataset"].card().to_dict())
    worse = log_best_model(registry["uri"], _new_parent(registry), *args, metric_value=0.1)
    assert not worse.alias_moved and "does not beat" in worse.reason
    assert str(client.get_model_version_by_alias(NAME, BEST_ALIAS).version) == registry["first"].version
    better = log_best_model(registry["uri"], _new_parent(registry), *args, metric_value=0.3)
    assert better.alias_moved and str(client.get_model_version_by_alias(NAME, BEST_ALIAS).version) == better.version
    assert float(client.get_model_version(NAME, better.version).tags[VALUE_TAG]) == 0.3
    from tune.serving import describe_registration

    assert describe_registration(worse) == (
        f"Registered the best model as version {worse.version} of {NAME!r} (models:/{NAME}/{worse.version}); the "
        f"alias @best stays where it was ({worse.reason}).")
    assert describe_registration(better).endswith(f"the alias @best now points to it ({better.reason}).")


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory, synthetic_dataset):
    """The same tiny model evaluated like the smoke space does: 99 sampled negatives (a far easier ranking)."""
    root = tmp_path_factory.mktemp("smoke")
    train(Config().with_overrides([*TINY, "eval.n_negatives=99"]), synthetic_dataset, out_dir=root / "run")
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    for name in ("best.pt", "config.yaml"):
        shutil.copy2(root / "run" / name, checkpoint / name)
    return checkpoint


@pytest.mark.parametrize("order", [("smoke", "default"), ("default", "smoke")])
def test_best_stays_on_the_standard_protocol_model_whatever_the_order(order, registry, smoke_checkpoint,
                                                                     mlflow_store, capsys):
    """Issue 27 §1: a smoke search (99 negatives, a higher val_mrr_sum) and a default search (999 negatives) into
    one store, in either order: @best holds the default search's model; each search's alias holds its own model,
    every version is tagged with its protocol, and each search prints which alias its serve command uses."""
    from tune.names import PROTOCOL_TAG, SPLIT_TAG, STANDARD_TAG
    from tune.serving import STANDARD_PROTOCOL, publish_best_model

    client = tracking.client_for(mlflow_store)
    exp = tracking.ensure_experiment(client, "dpgdiff", tracking.artifact_root_for(mlflow_store))
    searches = {"smoke": (smoke_checkpoint, 0.5), "default": (registry["checkpoint"], 0.1)}
    logged, printed = {}, {}
    for search in order:
        checkpoint, value = searches[search]
        parent = client.create_run(exp, run_name=search).info.run_id
        logged[search] = publish_best_model(mlflow_store, parent, checkpoint, registry["dataset"], value,
                                            search=search)
        printed[search] = capsys.readouterr().out
    best = client.get_model_version_by_alias(NAME, BEST_ALIAS)
    assert str(best.version) == logged["default"].version and best.tags[STANDARD_TAG] == "1"
    assert best.tags[PROTOCOL_TAG] == STANDARD_PROTOCOL == "n_negatives=999,candidate_seed=2040,ties=avg,metric=val_mrr_sum"
    smoke = client.get_model_version(NAME, logged["smoke"].version)
    assert smoke.tags[PROTOCOL_TAG].startswith("n_negatives=99,") and smoke.tags[STANDARD_TAG] == "0"
    assert smoke.tags["dataset.fingerprint"] == best.tags["dataset.fingerprint"] == registry["dataset"].fingerprint
    assert smoke.tags[SPLIT_TAG] == best.tags[SPLIT_TAG] == registry["dataset"].split
    for search in order:
        assert str(client.get_model_version_by_alias(NAME, f"search-{search}").version) == logged[search].version
    assert "The commands below serve @search-smoke " in printed["smoke"] and "@search-smoke --env-manager" in printed["smoke"]
    assert "The commands below serve @best " in printed["default"] and f"{NAME}@best --env-manager" in printed["default"]
    assert not logged["smoke"].alias_moved and "not the standard" in logged["smoke"].reason


def test_search_alias_keeps_to_mlflows_alias_characters():
    from tune.serving import search_alias

    assert search_alias("food_kitchen-2026.12.01") == "search-food_kitchen-2026_12_01"
    from mlflow.utils.validation import _validate_model_alias_name

    _validate_model_alias_name(search_alias("a.b-c_d"))  # raises on a character MLflow refuses


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=scaled(60)) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_mlflow_models_serve_answers_invocations(registry, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@{BEST_ALIAS}",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = start_http_server(cmd, tmp_path, f"http://127.0.0.1:{port}/ping", {"MLFLOW_TRACKING_URI": registry["uri"]})
    try:
        nx = registry["dataset"].items.n_items_x
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"dataframe_records": [{"history": [12, 55, nx + 301], "domain": "y", "k": 4},
                                                    {"history": [7, 999999], "domain": "x", "k": 2}]})
        assert status == 200, body
        rows = json.loads(body)["predictions"]
        assert len(rows[0]["items"]) == 4 and all(i >= nx for i in rows[0]["items"])
        assert len(rows[1]["items"]) == 2 and rows[1]["unknown"] == ["999999"]
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"dataframe_records": [{"history": [], "domain": "y", "k": 4}]})
        assert status == 400 and "empty history" in body and "Traceback" not in body, body
    finally:
        kill_session(proc.pid)
    assert proc.wait(timeout=30) is not None


def test_a_resumed_search_does_not_register_its_best_model_again(registry, capsys):
    """A driver killed after registering the model, before closing its parent run: the resumed search's end
    adopts that version (tune/finish.py runs publish_best_model again), and logs no second model."""
    from tune.serving import publish_best_model, registered_from

    before = registered_from(registry["uri"], registry["parent"])
    assert before, "the fixture registered a version from this run"
    again = publish_best_model(registry["uri"], registry["parent"], registry["checkpoint"], registry["dataset"], 0.2)
    assert again.model_uri == before[0] and registered_from(registry["uri"], registry["parent"]) == before
    assert f"version 1 of 'dpgdiff-synthetic' ({before[0]})" in capsys.readouterr().out
    assert len(_logged_models(registry, registry["parent"])) == 1


def _logged_models(registry, run_id: str) -> list:
    exp = registry["client"].get_run(run_id).info.experiment_id
    return mlflow.search_logged_models(experiment_ids=[exp], filter_string=f"source_run_id = '{run_id}'",
                                       output_format="list")


KILLED_PUBLISH = """
import os, signal, sys
import mlflow
from dpgdiff.data import load_dataset
from tune import serving
point, uri, run_id, checkpoint, data_dir = sys.argv[1:]

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after logging":  # the model is logged into the run; the driver dies before registering it
    serving.mlflow.register_model = killed
else:  # "after registering": the version exists; the driver dies before any alias moves
    serving.mlflow.MlflowClient.set_registered_model_alias = killed
dataset = load_dataset("synthetic", data_dir=data_dir, **{options})
serving.publish_best_model(uri, run_id, checkpoint, dataset, 0.25, search="killed")
"""


@pytest.mark.parametrize("point", ["after logging", "after registering"])
def test_a_driver_killed_during_registration_leaves_one_model_and_version_once_resumed(point, registry,
                                                                                      synthetic_data_dir):
    """Issue 27 §3: the driver SIGKILLed between logging the model and registering it, or right after the version
    was created: the resumed search's end (publish_best_model again) reuses the logged model / adopts the version,
    tags it, and moves the aliases. One logged model and one version per parent run."""
    import subprocess

    from tests.conftest import SYNTHETIC_TEST_OPTIONS
    from tests.test_search_helpers import env
    from tune.names import SOURCE_RUN_TAG
    from tune.serving import publish_best_model, registered_from

    parent = _new_parent(registry)
    script = KILLED_PUBLISH.replace("{options}", repr(SYNTHETIC_TEST_OPTIONS))
    proc = subprocess.run([sys.executable, "-c", script, point, registry["uri"], parent, str(registry["checkpoint"]),
                           str(synthetic_data_dir)], env=env(), capture_output=True, text=True, timeout=scaled(600))
    assert proc.returncode == -9, f"the driver was not killed at {point}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(_logged_models(registry, parent)) == 1
    assert len(registered_from(registry["uri"], parent)) == (0 if point == "after logging" else 1)
    # logging the model through mlflow.start_run's context must not leave the unfinished parent FINISHED
    assert registry["client"].get_run(parent).info.status == "RUNNING"
    logged = publish_best_model(registry["uri"], parent, registry["checkpoint"], registry["dataset"], 0.25,
                                search="killed")
    assert registered_from(registry["uri"], parent) == [logged.model_uri]
    assert len(_logged_models(registry, parent)) == 1
    version = registry["client"].get_model_version(NAME, logged.version)
    assert version.tags[SOURCE_RUN_TAG] == parent and float(version.tags[VALUE_TAG]) == 0.25
    assert str(registry["client"].get_model_version_by_alias(NAME, "search-killed").version) == logged.version
