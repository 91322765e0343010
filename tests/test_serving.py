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
from tests.test_search_helpers import free_port, kill_session, start_http_server, tracking_uri  # noqa: E402
from tune import tracking  # noqa: E402
from tune.serving import BEST_ALIAS, VALUE_TAG, log_best_model, registered_name  # noqa: E402

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


def test_alias_moves_only_when_the_search_improves(registry):
    client, args = registry["client"], (registry["uri"], registry["parent"], registry["checkpoint"],
                                        registry["dataset"].card().to_dict())
    worse = log_best_model(*args, metric_value=0.1)
    assert not worse.alias_moved and "does not beat" in worse.reason
    assert str(client.get_model_version_by_alias(NAME, BEST_ALIAS).version) == registry["first"].version
    better = log_best_model(*args, metric_value=0.3)
    assert better.alias_moved and str(client.get_model_version_by_alias(NAME, BEST_ALIAS).version) == better.version
    assert float(client.get_model_version(NAME, better.version).tags[VALUE_TAG]) == 0.3
    from tune.serving import describe_registration

    assert describe_registration(worse) == (
        f"Registered the best model as version {worse.version} of {NAME!r} (models:/{NAME}/{worse.version}); the "
        f"alias @best stays where it was ({worse.reason}).")
    assert describe_registration(better).endswith(f"the alias @best now points to it ({better.reason}).")


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
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
    registers nothing new (tune/driver.py runs publish_best_model again)."""
    from tune.serving import publish_best_model, registered_from

    before = registered_from(registry["uri"], registry["parent"])
    assert before, "the fixture registered a version from this run"
    assert publish_best_model(registry["uri"], registry["parent"], registry["checkpoint"], registry["dataset"],
                              0.9) is None
    assert registered_from(registry["uri"], registry["parent"]) == before
    assert "registered already" in capsys.readouterr().out
