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
the selection metric. Each registered version carries the tags `dpgdiff.metric`, `dpgdiff.metric_value`,
`dataset.fingerprint`, `dataset.split`, `dpgdiff.eval_protocol` (negatives, candidate seed, ties and
metric its score was measured with), `dpgdiff.standard_protocol` ("1" when that is the standard one) and
`source_run_id` (the search's parent run).

Which version is `@best` (issue 27 §1): scores measured under different protocols are not comparable (MRR
against 99 sampled negatives is far higher than against 999). So the alias `best` means the best model under
the standard protocol (STANDARD_PROTOCOL: 999 negatives, the default candidate seed and ties, selected on
val_mrr_sum), and moves to a new standard version only when its metric beats the version holding it on
the same dataset fingerprint and split (a version on other data takes it: the data changed). A version
measured any other way (a smoke search) is registered and tagged but never takes or displaces `@best`.
Each search also moves an alias of its own, `search-<name>` (`search_alias`), to its model, so that what a
search found can always be served.

Registration happens once per parent run (issue 27 §3): a version whose run is the parent run is adopted
(its tags completed) instead of a second one, and the model logged into the parent run is reused, so a
driver killed between logging the model and registering it, or right after, leaves one logged model and one
version once the search is resumed.
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
# The versions' tag names are tune/names.py's. This file is also the served model's code (models from code: loading
# the model runs it, with only dpgdiff shipped beside it), so it imports nothing of `tune` at module level: the
# functions that tag versions, which run in the search, import the names.
MODEL_NAME_PREFIX = "dpgdiff-"
SEARCH_ALIAS_PREFIX = "search-"
DEFAULT_METRIC = "val_mrr_sum"
LOGGED_MODEL_NAME = "model"  # the pyfunc model's name inside the parent run


def eval_protocol(config: Any, metric: str = DEFAULT_METRIC) -> str:
    """How a checkpoint's selection score was measured: sampled negatives, their seed, ties, and the metric."""
    e = config.eval
    return f"n_negatives={e.n_negatives},candidate_seed={e.candidate_seed},ties={e.ties},metric={metric}"


def _standard_protocol() -> str:
    from dpgdiff.config import Config

    return eval_protocol(Config(), DEFAULT_METRIC)


STANDARD_PROTOCOL = _standard_protocol()  # n_negatives=999,candidate_seed=2040,ties=avg,metric=val_mrr_sum


def search_alias(search: str) -> str:
    """The alias of a search's own model: search-<name>, in MLflow's alias characters (letters, digits, _ and -)."""
    return SEARCH_ALIAS_PREFIX + "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in search)


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
                   metric_value: float, metric: str = DEFAULT_METRIC, extra_tags: Optional[dict[str, str]] = None,
                   search: Optional[str] = None) -> LoggedModel:
    """Log the best trial's checkpoint folder (best.pt + config.yaml) as a pyfunc model under `run_id`
    (the search's parent run) and register it as dpgdiff-<dataset>, once per run: a version already made from
    `run_id` is adopted. Then move the alias `best` to it when it was measured under STANDARD_PROTOCOL and
    `metric_value` (higher is better) beats the version holding the alias, and `search-<search>` to it."""
    import mlflow

    from dpgdiff.recommend import Recommender
    from tune.names import (FINGERPRINT_TAG, METRIC_TAG, PROTOCOL_TAG, SEARCH_TAG, SOURCE_RUN_TAG, SPLIT_TAG,
                            STANDARD_TAG, VALUE_TAG)

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
    protocol = eval_protocol(rec.config, metric)
    tags = {METRIC_TAG: metric, VALUE_TAG: repr(float(metric_value)), FINGERPRINT_TAG: fingerprint,
            SPLIT_TAG: str(rec.info["dataset"].get("split")), PROTOCOL_TAG: protocol,
            STANDARD_TAG: "1" if protocol == STANDARD_PROTOCOL else "0", SOURCE_RUN_TAG: run_id,
            **({SEARCH_TAG: search} if search else {}), **(extra_tags or {})}
    tags = {k: str(v) for k, v in tags.items()}
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = _version_of_run(client, name, run_id)
    if version is not None:  # registered before the driver was killed: adopt it, completing its tags
        for key, value in tags.items():
            if (version.tags or {}).get(key) != value:
                client.set_model_version_tag(name, version.version, key, value)
    else:
        model_uri = _logged_model_of_run(client, run_id) or _log_model(run_id, rec, checkpoint, config, dataset_card,
                                                                        metric, float(metric_value))
        version = mlflow.register_model(model_uri, name, tags=tags)  # tags in the same transaction
    version_id = str(version.version)
    moved, reason = _should_move_alias(client, name, version_id, tags)
    if moved:
        client.set_registered_model_alias(name, BEST_ALIAS, version_id)
    if search:
        client.set_registered_model_alias(name, search_alias(search), version_id)
    return LoggedModel(name, version_id, f"models:/{name}/{version_id}", moved, reason)


def _log_model(run_id: str, rec: Any, checkpoint: Path, config: Path, dataset_card: dict[str, Any], metric: str,
               metric_value: float) -> str:
    """Log the pyfunc model into `run_id` (not registered) -> its models:/<model_id> URI."""
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    meta = rec.info["dataset"]
    id_type = "long" if rec.ids.scheme == "c2dsr-global" else "string"
    signature = ModelSignature(
        inputs=Schema([ColSpec(Array(id_type), "history"), ColSpec("string", "domain"),
                       ColSpec("long", "k", required=False)]),
        outputs=Schema([ColSpec(Array(id_type), "items"), ColSpec(Array("double"), "scores"),
                        ColSpec(Array("string"), "unknown")]))
    ids, nx = rec.ids, rec.ids.n_items_x
    example = pd.DataFrame({"history": [ids.to_raw([1, nx + 1, 2])], "domain": [ids.domain_names[1]], "k": [5]})
    client = mlflow.MlflowClient()
    status = client.get_run(run_id).info.status  # mlflow.start_run's context ends the run FINISHED: put it back
    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / "dataset_card.json"
        card_path.write_text(json.dumps(dataset_card, indent=1, default=str))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=LOGGED_MODEL_NAME, python_model=str(Path(__file__).resolve()),  # models from code: no pickle
                artifacts={"checkpoint": str(checkpoint), "config": str(config), "dataset_card": str(card_path)},
                # The exact dpgdiff code travels with the model (this file is the model's code).
                code_paths=[str(REPO / "dpgdiff")],
                signature=signature, input_example=example,
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  "numpy", "pandas", "pyyaml"],
                metadata={"dataset": str(meta["name"]), "dataset_fingerprint": str(meta["fingerprint"]),
                          "metric": metric, "metric_value": metric_value, "sampler": rec.sampler,
                          "infer_steps": rec.infer_steps, "eval_protocol": eval_protocol(rec.config, metric)})
    if status != "FINISHED":
        client.update_run(run_id, status=status)
    return info.model_uri


def _version_of_run(client: Any, name: str, run_id: str) -> Any:
    """The version of `name` registered from `run_id` (the oldest, if a bug ever made several), or None."""
    try:
        found = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    except Exception:  # noqa: BLE001  no model registry at this tracking URI: nothing registered
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _logged_model_of_run(client: Any, run_id: str) -> Optional[str]:
    """models:/<model_id> of the complete (READY) model logged into `run_id`, or None. A model whose logging a
    killed driver interrupted (not READY) is deleted: it is logged again."""
    import mlflow

    run = client.get_run(run_id)
    try:
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                             filter_string=f"source_run_id = '{run_id}' AND name = '{LOGGED_MODEL_NAME}'")
    except Exception:  # noqa: BLE001  a tracking server without logged models: log a new one
        return None
    ready = None
    for model in sorted(models, key=lambda m: m.creation_timestamp):
        if str(getattr(model.status, "name", model.status)).upper().endswith("READY") and ready is None:
            ready = model
        elif ready is None:
            client.delete_logged_model(model.model_id)
    return f"models:/{ready.model_id}" if ready is not None else None


def registered_from(tracking_uri: str, run_id: str) -> list[str]:
    """models:/NAME/VERSION of every registered version made from `run_id`."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except Exception:  # noqa: BLE001  no model registry at this tracking URI: nothing registered
        return []
    return [f"models:/{v.name}/{v.version}" for v in versions]


def publish_best_model(tracking_uri: str, run_id: str, checkpoint_dir: str | Path, dataset: Any,
                       metric_value: Optional[float], *, metric: str = DEFAULT_METRIC,
                       search: Optional[str] = None) -> Optional[LoggedModel]:
    """The end of a search (tune/finish.py): log + register the best trial's checkpoint folder (once per parent
    run: a resumed search adopts what a killed driver registered) and say what happened, with the commands to
    use it and which alias they serve. A failure here is reported, not raised: the search's results are already
    stored, and the model can be logged again by calling log_best_model."""
    import sys

    if metric_value is None or not Path(checkpoint_dir).is_dir():
        print(f"note: no model registered: the best trial has no {metric} or no checkpoint", file=sys.stderr)
        return None
    try:
        logged = log_best_model(tracking_uri, run_id, checkpoint_dir, dataset.card().to_dict(),
                                metric_value=float(metric_value), metric=metric, search=search)
    except Exception as exc:  # noqa: BLE001  reported, see the docstring
        print(f"warning: the best model was not registered ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    alias = BEST_ALIAS if logged.alias_moved or not search else search_alias(search)
    print(f"\n{describe_registration(logged, search)}\n"
          f"The commands below serve @{alias}"
          + (" (the best model under the standard protocol)." if alias == BEST_ALIAS else
             f" (this search's model; @{BEST_ALIAS} is another version or none).") + "\n"
          f"  python -c \"import mlflow; mlflow.set_tracking_uri('{tracking_uri}'); "
          f"print(mlflow.pyfunc.load_model('models:/{logged.name}@{alias}').metadata)\"\n"
          f"  MLFLOW_TRACKING_URI={tracking_uri} mlflow models serve -m models:/{logged.name}@{alias} "
          f"--env-manager local --host 127.0.0.1 --port 5001", flush=True)
    return logged


def describe_registration(logged: LoggedModel, search: Optional[str] = None) -> str:
    """One plain sentence: which version was registered, under which aliases, and whether @best moved, and why."""
    head = f"Registered the best model as version {logged.version} of {logged.name!r} ({logged.model_uri})"
    if search:
        head += f", alias @{search_alias(search)} (this search's model)"
    if logged.alias_moved:
        return f"{head}; the alias @{BEST_ALIAS} now points to it ({logged.reason})."
    return f"{head}; the alias @{BEST_ALIAS} stays where it was ({logged.reason})."


def _should_move_alias(client: Any, name: str, version: str, tags: dict[str, str]) -> tuple[bool, str]:
    """(move @best to `version`?, why), from the new version's `tags` and those of the version holding @best."""
    from mlflow.exceptions import MlflowException

    from tune.names import FINGERPRINT_TAG, METRIC_TAG, PROTOCOL_TAG, SPLIT_TAG, VALUE_TAG

    if tags[PROTOCOL_TAG] != STANDARD_PROTOCOL:
        return False, (f"measured with {tags[PROTOCOL_TAG]}, not the standard {STANDARD_PROTOCOL}: scores not "
                       f"comparable, @{BEST_ALIAS} is left as is")
    try:
        holder = client.get_model_version_by_alias(name, BEST_ALIAS)
    except MlflowException:
        return True, f"no version held @{BEST_ALIAS} before"
    if str(holder.version) == version:
        return True, f"version {version} holds @{BEST_ALIAS} already"
    held = holder.tags or {}
    if held.get(PROTOCOL_TAG) != STANDARD_PROTOCOL:
        return True, (f"version {holder.version} (@{BEST_ALIAS}) was measured with "
                      f"{held.get(PROTOCOL_TAG) or 'an unrecorded protocol'}, not the standard one")
    for tag, what in ((FINGERPRINT_TAG, "other data (fingerprint"), (SPLIT_TAG, "another split (")):
        if held.get(tag) != tags[tag]:
            return True, (f"version {holder.version} (@{BEST_ALIAS}) was trained on {what} "
                          f"{str(held.get(tag))[:12]}): scores not comparable, the new data wins")
    try:
        old = float(held[VALUE_TAG])
    except (KeyError, ValueError):
        return True, f"version {holder.version} (@{BEST_ALIAS}) has no {VALUE_TAG} tag"
    value, metric = float(tags[VALUE_TAG]), tags[METRIC_TAG]
    if value > old:
        return True, f"{metric} {value:.4f} beats version {holder.version}'s {old:.4f}"
    return False, f"{metric} {value:.4f} does not beat version {holder.version}'s {old:.4f}; @{BEST_ALIAS} stays"


# Models from code (MLflow 3): loading the model runs this file, which names the object to serve.
mlflow.models.set_model(DpgdiffModel())
