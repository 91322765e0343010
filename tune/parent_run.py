"""A search's MLflow parent run: opened (or reopened on resume) with its inputs, and how `mlflow ui` shows it.

One parent run per search holds what the search is (its space, settings, dataset card and the full base config
once); its trials are child runs (tune/tracking.py). A resume finds it again by its tags, and `finished_already`
reads there whether a resume has anything left to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tune import study as optuna_study
from tune import tracking
from tune.errors import StoreError
from tune.names import (
    DATASET_TAG,
    FINGERPRINT_TAG,
    GIT_COMMIT_TAG,
    INPUTS_LOGGED_TAG,
    ROLE_SEARCH,
    ROLE_TAG,
    SEARCH_DONE_TAG,
    SEARCH_TAG,
    SEED_TAG,
    SOURCE_COMMIT_TAG,
)
from tune.results import METRIC, tune_trials
from tune.settings import DEFAULT_UI_PORT, SearchSettings
from tune.space import SearchSpace


@dataclass(frozen=True)
class ParentRun:
    """The search's MLflow parent run and the callback that keeps one child run per trial."""

    client: Any  # MlflowClient
    experiment_id: str
    run_id: str
    tracker: tracking.MLflowTrialTracker


def open_parent_run(settings: SearchSettings, space: SearchSpace, card: Any) -> ParentRun:
    """Create (or reopen, on resume) the search's parent run; log its inputs when new."""
    uri = settings.tracking_uri
    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, settings.experiment, tracking.artifact_root_for(uri))
    commit = settings.git_commit or "unknown"
    tags = {DATASET_TAG: settings.dataset.name, FINGERPRINT_TAG: settings.fingerprint or "", GIT_COMMIT_TAG: commit,
            SEED_TAG: str(settings.seed), SOURCE_COMMIT_TAG: commit.split("+")[0]}
    run_id, reopened = tracking.start_parent_run(client, exp_id, settings.name, tags)
    # once, and again after a driver killed before they were all logged (the same values: MLflow accepts that)
    if not reopened or INPUTS_LOGGED_TAG not in client.get_run(run_id).data.tags:
        _log_parent_inputs(client, run_id, settings, card, space)
        client.set_tag(run_id, INPUTS_LOGGED_TAG, "1")
    print(f"MLflow: {uri} experiment {settings.experiment!r} run {run_id}{' (reopened)' if reopened else ''}",
          flush=True)
    tracker = tracking.MLflowTrialTracker(uri, exp_id, run_id, settings.name, space)
    return ParentRun(client, exp_id, run_id, tracker)


def _log_parent_inputs(client: Any, run_id: str, settings: SearchSettings, card: Any, space: SearchSpace) -> None:
    saved = settings.to_saved()
    if settings.optuna_storage:  # MLflow gets the URL without a password
        saved["optuna_storage"] = optuna_study.shown(settings.optuna_storage)
    params = {k: saved[k] for k in ("num_samples", "epochs", "seed", "scheduler", "grace_period", "reduction_factor",
                                    "max_concurrent", "cpus_per_trial", "gpus_per_trial", "max_failures",
                                    "space_source", "startup_trials")}
    params["objectives"] = ",".join(settings.objectives)
    if settings.optuna_storage:
        params.update(optuna_storage=optuna_study.shown(settings.optuna_storage), optuna_study=settings.name)
    if settings.time_budget_s:
        params["time_budget_s"] = settings.time_budget_s
    if settings.warm_start:  # the searches it started from (search_settings.json has the configurations)
        params["warm_start"] = ",".join(dict.fromkeys(p["search"] for p in settings.warm_start))
    # The full base config (defaults < fixed) once, here; trials log only what they sample. The searched
    # fields are left out of the params (their values differ per trial; search_space.yaml has the ranges).
    base = space.base_values()
    params.update({k: v for k, v in base.items() if k not in space.params})
    params.update({"dataset": settings.dataset.name, "split": settings.dataset.split,
                   "dataset.fingerprint": settings.fingerprint, "argv": " ".join(settings.argv) or "(none)",
                   "git_commit": settings.git_commit or "unknown"})
    params.update({f"fixed.{k}": v for k, v in settings.fixed.items()})
    tracking.log_params(client, run_id, params)
    client.log_text(run_id, space.text, "search_space.yaml")
    client.log_text(run_id, str(card), "dataset_card.txt")
    client.log_dict(run_id, card.to_dict(), "dataset_card.json")
    client.log_dict(run_id, saved, "search_settings.json")
    nested: dict[str, dict[str, Any]] = {}
    for key, value in base.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    client.log_dict(run_id, nested, "config.yaml")  # the base config; searched fields at their defaults


def finished_already(settings: SearchSettings) -> Optional[str]:
    """What to say when a resume has nothing to do: the search's MLflow parent run is FINISHED with every step of
    its end done (SEARCH_DONE_TAG), and --retry-errored is not given or finds no errored trial in Tune's saved
    state. None otherwise (also when the store cannot be read: the resume then proceeds and reports what it
    finds)."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    try:
        client = tracking.client_for(uri)
        experiment = client.get_experiment_by_name(settings.experiment)
        runs = experiment and tracking.find_runs(client, experiment.experiment_id,
                                                 {SEARCH_TAG: settings.name, ROLE_TAG: ROLE_SEARCH})
    except StoreError:  # a broken store is named now, before Ray starts
        raise
    except Exception:  # noqa: BLE001  see the docstring
        return None
    if not runs or runs[0].info.status != "FINISHED" or runs[0].data.tags.get(SEARCH_DONE_TAG) != "1":
        return None  # (FINISHED alone is not enough: a killed driver's end may have closed it half-way)
    errored = [t.trial_id for t in tune_trials(settings.path) if t.status == "ERROR"] if settings.run.retry_errored else []
    if errored:
        return None
    return (f"search {settings.name!r} finished already (MLflow parent run {runs[0].info.run_id} is FINISHED"
            + ("; --retry-errored: no trial ended in ERROR" if settings.run.retry_errored else "")
            + "): nothing to resume, nothing changed. Start a new search with another --name.")


def ui_links(experiment_id: str, parent_run_id: str, search: str, port: int = DEFAULT_UI_PORT) -> str:
    """The `mlflow ui` pages of a search: its parent run, and the runs list of this search with every trial
    on its own row. The list uses MLflow 3's runs route, `#/experiments/<id>/runs?...`, which honours the
    query (the experiment's own route, `#/experiments/<id>?...`, ignores it: no filter, sorted by date);
    `workflowType=machine_learning` in both links opens the classic (model training) view: MLflow 3.17.2 keeps
    the GenAI / model training choice in the browser, and a fresh one shows the GenAI overview, with runs as
    "Evaluation runs" (bench/ui_links_check.py). With a search filter the UI lists the trials flat (it nests
    children only without a filter), here sorted by best_val_mrr_sum (the parent, which has no such metric,
    comes last). port: `mlflow ui`'s (the search's --ui-port)."""
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
    return (f"    parent run:           {base}/runs/{parent_run_id}?workflowType=machine_learning\n"
            f"    its trials (a list):  {base}/runs?{runs_list_query(search)}")


def runs_list_query(search: str) -> str:
    """The query of the runs-list link: this search's runs, best validation first, classic runs view."""
    from urllib.parse import urlencode

    return urlencode({"workflowType": "machine_learning", "searchFilter": search_filter(search),
                      "orderByKey": f"metrics.`best_{METRIC}`", "orderByAsc": "false"})


def search_filter(search: str) -> str:
    """The MLflow search filter matching a search's parent and child runs (the UI link and tests use it)."""
    return f"tags.`{SEARCH_TAG}` = '{search}'"
