"""The best trial as an MLflow pyfunc model, registered as `dpgdiff-<dataset>` with the alias `best`.

    from tune.serving import log_best_model
    info = log_best_model(tracking_uri, parent_run_id, "runs/.../best/checkpoint", card.to_dict(),
                          metric_value=0.123)          # at the end of tune/search.py
    model = mlflow.pyfunc.load_model("models:/dpgdiff-synthetic@best")
    model.predict(pd.DataFrame({"history": [[12, 55, 301]], "domain": ["y"], "k": [10]}))

    mlflow models serve -m models:/dpgdiff-synthetic@best --env-manager local --host 127.0.0.1 --port 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_records": [{"history": [12, 55, 301], "domain": "y", "k": 5}]}'

Input: a DataFrame with `history` (the user's own item ids, oldest first: ints for C2DSR-format
data, the log's item_id text for interaction logs; see dpgdiff/data/ids.py), `domain` (x | y | a
log's domain value) and optionally `k` (default 10). Output: one row per input row with `items`
(best first), `scores`, and `unknown` (history ids that were dropped). History items are excluded.
An empty or invalid history is an MLflow INVALID_PARAMETER_VALUE error naming the row (HTTP 400
from the server), not a stack trace. The prediction code is `dpgdiff.recommend.Recommender`, the
same as `python -m dpgdiff recommend`.

The model holds artifacts `checkpoint` (best.pt), `config` (the resolved config.yaml) and
`dataset_card` (JSON, with the fingerprint); its metadata repeats the dataset name, fingerprint and
the selection metric. Each registered version carries the tags `dpgdiff.metric`, `dpgdiff.metric_value`
and `dataset.fingerprint`; the alias `best` moves to a new version only when its metric beats the
version holding the alias (on the same dataset fingerprint; a version trained on other data takes
the alias, since the two scores are not comparable).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import mlflow.models
import mlflow.pyfunc
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
BEST_ALIAS = "best"
METRIC_TAG, VALUE_TAG, FINGERPRINT_TAG = "dpgdiff.metric", "dpgdiff.metric_value", "dataset.fingerprint"
MODEL_NAME_PREFIX = "dpgdiff-"


def registered_name(dataset_name: str) -> str:
    """dpgdiff-<dataset>, with characters the registry dislikes replaced."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(dataset_name))
    return MODEL_NAME_PREFIX + safe


class DpgdiffModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of `dpgdiff.recommend.Recommender` (checkpoint and config come as artifacts)."""

    def load_context(self, context: Any) -> None:
        import os

        from dpgdiff.recommend import Recommender

        # The server's device: cpu unless DPGDIFF_SERVE_DEVICE says otherwise (auto, cuda, cuda:N).
        self.recommender = Recommender.load(context.artifacts["checkpoint"],
                                            device=os.environ.get("DPGDIFF_SERVE_DEVICE", "cpu"))

    # model_input: pd.DataFrame is the one hint MLflow neither warns about nor derives a schema from
    # (the signature is given explicitly in log_best_model).
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from dpgdiff.recommend import DEFAULT_K, RecommendError

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in ("history", "domain") if c not in frame.columns]
        if missing:
            raise MlflowException(f"input is missing column(s) {', '.join(missing)}; expected history (list of item "
                                  "ids, oldest first), domain and optionally k", INVALID_PARAMETER_VALUE)
        ks = [DEFAULT_K if _missing(k) else k for k in frame["k"]] if "k" in frame.columns else DEFAULT_K
        try:
            results = self.recommender.recommend(list(frame["history"]), list(frame["domain"]), ks)
        except RecommendError as exc:
            raise MlflowException(str(exc), INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame({"items": [r.items for r in results], "scores": [r.scores for r in results],
                             "unknown": [[str(u) for u in r.unknown] for r in results]})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class LoggedModel:
    """What `log_best_model` did: the registered version and whether the alias moved (and why)."""

    name: str
    version: str
    model_uri: str
    alias_moved: bool
    reason: str


def log_best_model(tracking_uri: str, run_id: str, checkpoint_dir: str | Path, dataset_card: dict[str, Any], *,
                   metric_value: float, metric: str = "val_mrr_sum", extra_tags: Optional[dict[str, str]] = None,
                   ) -> LoggedModel:
    """Log the best trial's checkpoint folder (best.pt + config.yaml) as a pyfunc model under `run_id`
    (the search's parent run), register it as dpgdiff-<dataset>, and move the alias `best` to it when
    `metric_value` (higher is better) beats the version holding the alias."""
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    from dpgdiff.recommend import Recommender

    checkpoint_dir = Path(checkpoint_dir)
    checkpoint, config = checkpoint_dir / "best.pt", checkpoint_dir / "config.yaml"
    if not checkpoint.is_file():  # a trial stopped early: its last training checkpoint
        checkpoint = checkpoint_dir / "model.pt"
    for path in (checkpoint, config):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; log_best_model needs the best trial's best.pt (or model.pt) "
                                    "and config.yaml")
    rec = Recommender.load(checkpoint)  # fails here, not in the server, if the checkpoint cannot be served
    dataset = str(rec.info["dataset"]["name"])
    fingerprint = str(rec.info["dataset"]["fingerprint"])
    if dataset_card.get("fingerprint") not in (None, fingerprint):
        raise ValueError(f"dataset card fingerprint {str(dataset_card['fingerprint'])[:12]} differs from the "
                         f"checkpoint's {fingerprint[:12]}")
    name = registered_name(dataset)
    id_type = "long" if rec.ids.scheme == "c2dsr-global" else "string"
    signature = ModelSignature(
        inputs=Schema([ColSpec(Array(id_type), "history"), ColSpec("string", "domain"),
                       ColSpec("long", "k", required=False)]),
        outputs=Schema([ColSpec(Array(id_type), "items"), ColSpec(Array("double"), "scores"),
                        ColSpec(Array("string"), "unknown")]))
    ids, nx = rec.ids, rec.ids.n_items_x
    example = pd.DataFrame({"history": [ids.to_raw([1, nx + 1, 2])], "domain": [ids.domain_names[1]], "k": [5]})

    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / "dataset_card.json"
        card_path.write_text(json.dumps(dataset_card, indent=1, default=str))
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).resolve()),  # models from code: no pickle
                artifacts={"checkpoint": str(checkpoint), "config": str(config), "dataset_card": str(card_path)},
                # The exact dpgdiff code travels with the model (this file is the model's code).
                code_paths=[str(REPO / "dpgdiff")],
                signature=signature, input_example=example,
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  "numpy", "pandas", "pyyaml"],
                metadata={"dataset": dataset, "dataset_fingerprint": fingerprint, "metric": metric,
                          "metric_value": float(metric_value), "sampler": rec.sampler, "infer_steps": rec.infer_steps},
                registered_model_name=name)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = str(info.registered_model_version)
    tags = {METRIC_TAG: metric, VALUE_TAG: repr(float(metric_value)), FINGERPRINT_TAG: fingerprint,
            "source_run_id": run_id, **(extra_tags or {})}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    moved, reason = _should_move_alias(client, name, metric, float(metric_value), fingerprint)
    if moved:
        client.set_registered_model_alias(name, BEST_ALIAS, version)
    return LoggedModel(name, version, f"models:/{name}/{version}", moved, reason)


def registered_from(tracking_uri: str, run_id: str) -> list[str]:
    """models:/NAME/VERSION of the registered versions logged from `run_id` (complete ones: with VALUE_TAG)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except Exception:  # noqa: BLE001  no model registry at this tracking URI: nothing registered
        return []
    return [f"models:/{v.name}/{v.version}" for v in versions if VALUE_TAG in (v.tags or {})]


def publish_best_model(tracking_uri: str, run_id: str, checkpoint_dir: str | Path, dataset: Any,
                       metric_value: Optional[float], *, metric: str = "val_mrr_sum") -> Optional[LoggedModel]:
    """The end of a search (tune/search.py): log + register the best trial's checkpoint folder and say
    what happened, with the commands to use it. A failure here is reported, not raised: the search's
    results are already stored, and the model can be logged again by calling log_best_model."""
    import sys

    if metric_value is None or not Path(checkpoint_dir).is_dir():
        print(f"note: no model registered: the best trial has no {metric} or no checkpoint", file=sys.stderr)
        return None
    done = registered_from(tracking_uri, run_id)
    if done:  # a search resumed after its driver was killed in its last steps: register once
        print(f"\nThe best model of this search is registered already: {', '.join(done)}.", flush=True)
        return None
    try:
        logged = log_best_model(tracking_uri, run_id, checkpoint_dir, dataset.card().to_dict(),
                                metric_value=float(metric_value), metric=metric)
    except Exception as exc:  # noqa: BLE001  reported, see the docstring
        print(f"warning: the best model was not registered ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    print(f"\n{describe_registration(logged)}\n"
          f"  python -c \"import mlflow; mlflow.set_tracking_uri('{tracking_uri}'); "
          f"print(mlflow.pyfunc.load_model('models:/{logged.name}@{BEST_ALIAS}').metadata)\"\n"
          f"  MLFLOW_TRACKING_URI={tracking_uri} mlflow models serve -m models:/{logged.name}@{BEST_ALIAS} "
          f"--env-manager local --host 127.0.0.1 --port 5001", flush=True)
    return logged


def describe_registration(logged: LoggedModel) -> str:
    """One plain sentence: which version was registered, and whether the alias moved to it, and why."""
    head = f"Registered the best model as version {logged.version} of {logged.name!r} ({logged.model_uri})"
    if logged.alias_moved:
        return f"{head}; the alias @{BEST_ALIAS} now points to it ({logged.reason})."
    return f"{head}; the alias @{BEST_ALIAS} stays where it was ({logged.reason})."


def _should_move_alias(client: Any, name: str, metric: str, value: float, fingerprint: str) -> tuple[bool, str]:
    """(move?, why): compare with the version holding the alias, by its stored metric tag."""
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_model_version_by_alias(name, BEST_ALIAS)
    except MlflowException:
        return True, f"no version held @{BEST_ALIAS} before"
    tags = holder.tags or {}
    if tags.get(FINGERPRINT_TAG) != fingerprint:
        return True, (f"version {holder.version} (@{BEST_ALIAS}) was trained on other data (fingerprint "
                      f"{str(tags.get(FINGERPRINT_TAG))[:12]}): scores not comparable, the new data wins")
    if tags.get(METRIC_TAG) != metric:
        return True, f"version {holder.version} (@{BEST_ALIAS}) was selected on {tags.get(METRIC_TAG)!r}, not {metric!r}"
    try:
        old = float(tags[VALUE_TAG])
    except (KeyError, ValueError):
        return True, f"version {holder.version} (@{BEST_ALIAS}) has no {VALUE_TAG} tag"
    if value > old:
        return True, f"{metric} {value:.4f} beats version {holder.version}'s {old:.4f}"
    return False, f"{metric} {value:.4f} does not beat version {holder.version}'s {old:.4f}; @{BEST_ALIAS} stays"


# Models from code (MLflow 3): loading the model runs this file, which names the object to serve.
mlflow.models.set_model(DpgdiffModel())
