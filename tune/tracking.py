"""MLflow tracking for a search: one parent run per search, one nested child run per Tune trial.

Written from the driver by `MLflowTrialTracker` (a Tune Callback) instead of Ray's
MLflowLoggerCallback, which keeps its trial->run map in memory and so duplicates runs after a
restore (search-notes). Here a trial's run is found by its tags (`dpgdiff.trial_id` under the
parent's `mlflow.parentRunId`), so the mapping survives driver restarts; the callback also
closes runs when trials end: FINISHED when the trainable completed; FINISHED with the tags
`dpgdiff.stopped_early=1`, `dpgdiff.stopped_by=scheduler` and a run description when ASHA stopped it
(`dpgdiff.stopped_by=time_budget`, without stopped_early, when the search's --time-budget stopped it)
(an early stop is a result, not a failure); FAILED with the error text when it raised; KILLED only
for a trial a stopped driver left unfinished (`dpgdiff.interrupted=1` and a description saying so). A
resume reopens such a run (RUNNING) and drops the labels of how it ended before (`STALE_TAGS`), so a
trial that then trains to its last epoch ends FINISHED with no stopped-early or interrupted label. Only
meaningful metrics are logged (train_*, val_*, test_*, epoch_seconds, best_epoch, infer_ms), each
with step = epoch.

What a child run holds: only the trial's sampled parameters as params (the parent holds the
search's full base config), its resolved config as the artifact `config.yaml` (the fields its
model reads: what `python -m dpgdiff train --config` takes), and the tag `dpgdiff.optuna_trial`
with its Optuna trial number (also in the run name, `trial_003_<tune id>`), so that Optuna's plots,
which number trials 0, 1, ..., can be matched to runs.

Default store: SQLite `mlruns/mlflow.db` with artifacts in `mlruns/artifacts` (a plain file
store is refused by MLflow 3 by default).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from ray import tune

from tune import stores
from tune.budget import NeedsClock, stopped_by_budget
from tune.errors import StoreError
from tune.names import (
    BEST_EPOCH_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    INTERRUPTED_TAG,
    LOST_TAG,
    LABEL_TAG,
    MODEL_TAG,
    NOTE_TAG,
    OPTUNA_TAG,
    PARENT_TAG,
    REPLACED_BY_TAG,
    RETRIES_TAG,
    ROLE_LOST,
    ROLE_SEARCH,
    ROLE_TAG,
    ROLE_TRIAL,
    SAMPLED_TAG,
    SEARCH_TAG,
    STOPPED_BY_SCHEDULER,
    STOPPED_BY_TAG,
    STOPPED_BY_TIME_BUDGET,
    STOPPED_EARLY_TAG,
    TRIAL_TAG,
    WARM_START_TAG,
)

# How a run ended last time: removed when a resume reopens it (its trial goes on; how it ends now decides them).
STALE_TAGS = (STOPPED_EARLY_TAG, STOPPED_BY_TAG, INTERRUPTED_TAG, NOTE_TAG, ERROR_TAG)
_METRIC_PREFIXES = ("train_", "val_", "test_")
_METRIC_KEYS = {"epoch_seconds", "best_epoch", "infer_ms"}
_MAX_TAG = 5000  # MLflow tag values are limited (8000 chars in SQL stores); keep headroom


def artifact_root_for(tracking_uri: str) -> Optional[str]:
    """mlruns/artifacts beside a local SQLite store; None (the server decides) otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient of `tracking_uri`; a local SQLite store is checked (tune/stores.py) and built when new, and
    one MLflow cannot open is a StoreError naming it (not SQLAlchemy's traceback)."""
    from mlflow.tracking import MlflowClient

    from tune.sqlite_commits import fast_commits

    fast_commits()  # a local SQLite store: commits without fsync waits (tune/sqlite_commits.py)
    create_sqlite_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    db = stores.sqlite_file(tracking_uri)
    if db is not None:
        try:
            client.search_experiments(max_results=1)  # opens the store: MLflow checks its schema here
        except Exception as exc:  # noqa: BLE001  SQLAlchemy's or MLflow's error: named, with what to do
            why = first_error_line(f"{type(exc).__name__}: {exc}")[:300]
            raise StoreError(f"{db}: MLflow cannot open this store ({why}); if another MLflow version made it, "
                             f"back it up and run `mlflow db upgrade {tracking_uri}`, or pass --tracking-uri to use "
                             "another store") from None
    return client


def create_sqlite_store(tracking_uri: str) -> None:
    """Check a local SQLite store, and create it, atomically, when it does not exist yet (tune/stores.py).

    MLflow creates a new store's tables in many steps (its schema migrations). A driver killed in the middle
    (tests/test_local_ray.py's kill before the first trial hit it) left a store that every later start refused
    ("table ... already exists"). Here the store is built under a temporary name beside the target and then
    linked to its name; a store left half-made by an earlier version is named, with what to do."""
    db = stores.sqlite_file(tracking_uri)
    if db is None or not db.parent.is_dir():  # no folder: MLflow's own error names it
        return
    stores.check_sqlite_store(db, "MLflow store", "--tracking-uri")
    from mlflow.tracking import MlflowClient

    # search_experiments runs the migrations
    stores.create_aside(db, lambda url: MlflowClient(tracking_uri=url).search_experiments(max_results=1))


def ensure_experiment(client: Any, name: str, artifact_location: Optional[str]) -> str:
    """The experiment's id, creating it (with our artifact location) when missing; marked as model training
    (EXPERIMENT_KIND_TAG) unless it already has a kind (one a user chose in the UI stays). MLflow 3.17.2's UI still
    opens an experiment on the view the browser last used (a fresh one: GenAI); the printed links choose the view
    themselves (tune/parent_run.py `ui_links`)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_location,
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
        else:
            return exp_id
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def find_runs(client: Any, experiment_id: str, tags: dict[str, str], max_results: int = 1000) -> list[Any]:
    """Runs whose tags equal `tags` (all of them)."""
    clauses = [f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items()]
    return list(client.search_runs([experiment_id], filter_string=" and ".join(clauses), max_results=max_results))


def start_parent_run(client: Any, experiment_id: str, search: str, tags: dict[str, str]) -> tuple[str, bool]:
    """(run_id, resumed): the search's parent run, reopened when it exists (resume)."""
    runs = find_runs(client, experiment_id, {SEARCH_TAG: search, ROLE_TAG: ROLE_SEARCH})
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(experiment_id, run_name=search,
                            tags={**tags, SEARCH_TAG: search, ROLE_TAG: ROLE_SEARCH})
    return run.info.run_id, False


def child_runs(client: Any, experiment_id: str, parent_run_id: str, role: str = ROLE_TRIAL) -> list[Any]:
    """The parent's child runs of one role: ROLE_TRIAL (the search's trials) or ROLE_CONFIRMATION (reruns)."""
    return find_runs(client, experiment_id, {PARENT_TAG: parent_run_id, ROLE_TAG: role}, max_results=50000)


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches (MLflow takes at most 100 per call)."""
    from mlflow.entities import Param

    items = [Param(k, _short(v, 6000)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric results worth keeping (no config/*, pid, done, timers, ...)."""
    out = {}
    for k, v in result.items():
        if not (k.startswith(_METRIC_PREFIXES) or k in _METRIC_KEYS):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k] = float(v)
    return out


def _timed(hook: Any) -> Any:
    def wrapper(self: "MLflowTrialTracker", *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    wrapper.__name__ = hook.__name__
    return wrapper


class MLflowTrialTracker(NeedsClock, tune.Callback):
    """Tune callback (driver side) keeping one MLflow child run per trial, found by tag. With a --time-budget, its
    `clock` (tune/budget.py) tells the trials the budget stopped from those ASHA stopped."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, search: str,
                 space: Any, extra_tags: Optional[dict[str, str]] = None, role: str = ROLE_TRIAL) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.search = search
        self.space = space  # tune.space.SearchSpace: resolves a trial's full config for its params
        self.extra_tags = dict(extra_tags or {})
        self.role = role  # ROLE_TAG of the child runs: ROLE_TRIAL, or ROLE_CONFIRMATION for tune/confirm.py's reruns
        self._client: Any = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id (a cache; the tag is the truth)
        self._logged_steps: dict[str, set[int]] = {}  # run_id -> epochs already logged (resume)
        self._best: dict[str, float] = {}  # run_id -> best val_mrr_sum so far (logged as best_val_mrr_sum)
        self._final_logged: set[str] = set()  # run_ids whose final (test_*) metrics are logged (resume: once)
        self.seconds = 0.0  # driver time spent in these hooks (bench/bench_search.py reports it)
        self._known: Optional[dict[str, Any]] = None  # trial id -> run, read from MLflow once per session
        self._ended: set[str] = set()  # trial ids whose end Tune reported this session (complete or error hook)

    # Tune pickles callbacks into tuner.pkl, and a resumed search unpickles this tracker from there, written by
    # the interrupted driver, perhaps by an older version of this class. So only the constructor's arguments
    # are pickled (no client, no per-session cache) and __init__ rebuilds the rest: every field this version
    # has exists after a restore (a missing one crashed a resumed search in its first on_trial_result).
    _INIT_ARGS = ("tracking_uri", "experiment_id", "parent_run_id", "search", "space", "extra_tags", "role")

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._INIT_ARGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**{k: state[k] for k in self._INIT_ARGS if k in state})  # an older pickle: whole __dict__

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ trial -> run

    def run_id(self, trial: Any, create: bool = True) -> Optional[str]:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        if self._known is None:  # once per driver session: the runs earlier sessions of this search made
            self._known = {r.data.tags.get(TRIAL_TAG): r for r in
                           child_runs(self.client, self.experiment_id, self.parent_run_id, self.role)}
        runs = [self._known[tid]] if tid in self._known else []
        if runs:
            run_id = runs[0].info.run_id
            if runs[0].info.status != "RUNNING" and create:
                self.client.update_run(run_id, status="RUNNING")  # resumed trial (or, --retry-errored, failed)
                for key in STALE_TAGS:
                    if key in runs[0].data.tags:
                        self.client.delete_tag(run_id, key)
            history = self.client.get_metric_history(run_id, "val_mrr_sum")
            self._logged_steps[run_id] = {int(m.step) for m in history}
            values = [m.value for m in history if math.isfinite(m.value)]
            if values:
                self._best[run_id] = max(values)
            if "best_epoch" in runs[0].data.metrics:  # logged only with the final result
                self._final_logged.add(run_id)
        elif not create:
            return None
        else:
            from tune.trainable import OPTUNA_TRIAL_KEY, WARM_START_KEY, sampled_params

            sampled = sampled_params(dict(trial.config))
            number = trial.config.get(OPTUNA_TRIAL_KEY)
            try:
                resolved = self.space.resolve(sampled)
                config, label = resolved.to_file_dict(), resolved.label()
            except Exception:  # invalid combination: the trial itself fails with the message
                config, label = {}, ""
            model_name = (config.get("model") or {}).get("name", "")
            tags = {
                **self.extra_tags,
                PARENT_TAG: self.parent_run_id,
                ROLE_TAG: self.role,
                TRIAL_TAG: tid,
                SEARCH_TAG: self.search,
                MODEL_TAG: model_name,
                **({LABEL_TAG: label} if label else {}),
                SAMPLED_TAG: json.dumps(sampled, sort_keys=True, default=str)[:_MAX_TAG],
                **({OPTUNA_TAG: str(number)} if number is not None else {}),
                **({WARM_START_TAG: str(trial.config[WARM_START_KEY])} if trial.config.get(WARM_START_KEY) else {}),
            }
            name = _trial_name(trial)
            if number is not None:  # trial_003_<tune id>: sorts like Optuna's numbering
                name = f"trial_{int(number):03d}_{tid}"
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            run_id = run.info.run_id
            log_params(self.client, run_id, sampled)  # only what was sampled; the parent has the base config
            if config:
                try:
                    self.client.log_dict(run_id, config, "config.yaml")  # what `train --config` reads back
                except Exception:  # the artifact store is optional for the run to be tracked
                    pass
            self._logged_steps[run_id] = set()
        self._runs[tid] = run_id
        return run_id

    # ------------------------------------------------------------------ Tune hooks

    @_timed
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    @_timed
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.run_id(trial)
        metrics = trial_metrics(result)
        tags = []
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        if result.get("final"):
            if run_id in self._final_logged:
                return  # reported again by a trial rerun from its checkpoint after a driver restart
            self._final_logged.add(run_id)
            step = int(result.get("best_epoch", epoch))
            keep = {k: v for k, v in metrics.items() if k.startswith("test_") or k == "best_epoch"}
            tags.append(RunTag(BEST_EPOCH_TAG, str(step)))  # with the metrics: one call, one commit
        else:
            if epoch in self._logged_steps.setdefault(run_id, set()):
                return  # already logged before a driver restart
            step = epoch
            keep = dict(metrics)
            self._logged_steps[run_id].add(epoch)
            value = metrics.get("val_mrr_sum")
            if value is not None and math.isfinite(value) and value > self._best.get(run_id, float("-inf")):
                self._best[run_id] = value
                keep["best_val_mrr_sum"] = value  # its latest value is the best: report.py sorts by it
        batch = [Metric(k, v if math.isfinite(v) else float("nan"), now, step) for k, v in keep.items()]
        for i in range(0, max(1, len(batch)) if batch or tags else 0, 1000):
            self.client.log_batch(run_id, metrics=batch[i:i + 1000], tags=tags if i == 0 else [])

    @_timed
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failed trial Tune retries from its last checkpoint (--max-failures): the run stays open, tagged with
        the retries so far (RETRIES_TAG) and the last failure (ERROR_TAG, naming the node it ran on)."""
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, RETRIES_TAG, str(trial.run_metadata.num_failures))
        self.client.set_tag(run_id, ERROR_TAG, _short(_error_text(trial), _MAX_TAG))

    @_timed
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The trainable returned (final result), or the scheduler stopped the trial. Tune does not call this
        for trials it stops because the search itself stops (Ctrl-C): `on_experiment_end` closes those."""
        self._ended.add(trial.trial_id)
        run_id = self.run_id(trial)
        if not (trial.last_result or {}).get("final"):
            self._mark_stopped_early(run_id, trial)
        self.client.set_terminated(run_id, status="FINISHED")

    def _mark_stopped_early(self, run_id: str, trial: Any) -> None:
        """Tags and description of a trial the scheduler (ASHA), or the search's --time-budget, stopped: FINISHED,
        but not trained to the end."""
        epoch = (trial.last_result or {}).get("epoch", "?")
        if stopped_by_budget(self.clock, trial.trial_id):  # not an early stop: the search's time was up
            self.client.set_tag(run_id, STOPPED_BY_TAG, STOPPED_BY_TIME_BUDGET)
            if not (trial.last_result or {}).get("epoch"):
                self.client.set_tag(run_id, NOTE_TAG, "Stopped by the search's --time-budget before its first "
                                    "epoch ended: no result, nothing to select. Not a failure and not an early stop.")
                return
            self.client.set_tag(run_id, NOTE_TAG, f"Stopped by the search's --time-budget after epoch {epoch}: "
                                "the budget was spent while it trained. Not a failure and not an early stop; its "
                                "checkpoints are kept and it can be selected like a finished trial.")
            return
        self.client.set_tag(run_id, STOPPED_BY_TAG, STOPPED_BY_SCHEDULER)
        self.client.set_tag(run_id, STOPPED_EARLY_TAG, "1")
        self.client.set_tag(run_id, NOTE_TAG, f"Stopped early by the ASHA scheduler after epoch {epoch}: its "
                            "validation MRR sum was below the cut at that rung. Not a failure; its metrics are "
                            "those of the epochs it ran.")

    @_timed
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        run_id = self.run_id(trial)
        text = _error_text(trial)
        self.client.set_tag(run_id, ERROR_TAG, _short(text, _MAX_TAG))
        try:
            self.client.log_text(run_id, text, "error.txt")
        except Exception:  # the artifact store is optional for the status to be right
            pass
        self.client.set_terminated(run_id, status="FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Close the runs of trials that did not end. On Ctrl-C Tune marks its in-flight trials TERMINATED in
        memory without calling `on_trial_complete` (their saved state stays RUNNING: a resume continues them),
        so here a trial's end is what the hooks reported this session, not its in-memory status."""
        self.reconcile(trials, ended_by_hooks=True)
        print(f"MLflow tracking: {self.seconds:.1f} s on the driver during the search", flush=True)

    def reconcile(self, trials: Iterable[Any], ended_by_hooks: bool = False) -> None:
        """Make every child run's status match its trial's; runs of unfinished trials become KILLED, runs of
        trials Tune lost are closed (`close_lost_runs`). trials: Tune's saved state (tune/finish.py), or, with
        `ended_by_hooks`, Tune's in-memory trials at the end of the experiment: then a trial whose end no hook
        reported this session was stopped by the search stopping, whatever its in-memory status says."""
        trials = list(trials)
        self.close_lost_runs(trials)
        for trial in trials:
            run_id = self.run_id(trial, create=False)
            if run_id is None:
                continue
            status = self.client.get_run(run_id).info.status
            want = mlflow_status(trial)
            if ended_by_hooks and want != "FAILED" and trial.trial_id not in self._ended:
                # stopped because the search stopped: its --time-budget was spent (a result), or it was interrupted.
                # A trial whose final result arrived before the stop, but whose end Tune had not yet processed, did
                # train to the end: FINISHED. (Tune's saved state still has it running, so a resume replays its final
                # report from the final checkpoint, tune/trainable.py, without retraining; the run stays FINISHED.)
                done = stopped_by_budget(self.clock, trial.trial_id) or (trial.last_result or {}).get("final")
                want = "FINISHED" if done else "KILLED"
            if status == "RUNNING" or (want == "FAILED" and status != "FAILED"):
                if want == "KILLED":
                    self._mark_interrupted(run_id, trial)
                if want == "FINISHED" and not (trial.last_result or {}).get("final"):
                    self._mark_stopped_early(run_id, trial)
                if want == "FAILED":
                    self.client.set_tag(run_id, ERROR_TAG, _short(_error_text(trial), _MAX_TAG))
                self.client.set_terminated(run_id, status=want)


    def _mark_interrupted(self, run_id: str, trial: Any) -> None:
        """Tag and description of a trial the search left unfinished (KILLED; a resume reopens the run)."""
        epoch = (trial.last_result or {}).get("epoch")
        done = f"after epoch {epoch}" if epoch else "before its first epoch ended"
        self.client.set_tag(run_id, INTERRUPTED_TAG, "1")
        self.client.set_tag(run_id, NOTE_TAG, f"Interrupted {done}: the search stopped (Ctrl-C, or its driver "
                            "ended) before this trial finished. `python tune/search.py --name NAME --resume` "
                            "continues it from its last checkpoint and reopens this run.")

    def close_lost_runs(self, trials: Iterable[Any]) -> list[str]:
        """Close the runs of trials that Tune's restored state does not hold -> their run ids.

        A driver killed after a trial started but before Tune's next experiment snapshot leaves that
        trial's run in MLflow, while the resumed search never hears of the trial again: its searcher,
        restored from the same snapshot, proposes the configuration anew under a new trial id. Such a
        run ends KILLED, its role becomes ROLE_LOST (so reports and counts skip it: one run per trial),
        and REPLACED_BY_TAG names the run of the trial with the same sampled configuration, if any."""
        known = {t.trial_id for t in trials}
        # Only this Tune experiment's runs: several confirmations (extra_tags names each) share a parent and role.
        runs = [r for r in child_runs(self.client, self.experiment_id, self.parent_run_id, self.role)
                if all(r.data.tags.get(k) == v for k, v in self.extra_tags.items())]
        replacement = {}  # sampled configuration (its tag) -> run of a trial Tune holds
        for run in runs:
            if run.data.tags.get(TRIAL_TAG) in known:
                replacement.setdefault(run.data.tags.get(SAMPLED_TAG), run.info.run_id)
        lost = []
        for run in runs:
            tid = run.data.tags.get(TRIAL_TAG)
            if tid in known:
                continue
            by = replacement.get(run.data.tags.get(SAMPLED_TAG))
            why = (f"trial {tid} started, but the driver was killed before Tune saved it; the resumed search "
                   f"does not hold it" + (f" and ran its configuration again as run {by}" if by else ""))
            self.client.set_tag(run.info.run_id, LOST_TAG, why)
            if by:
                self.client.set_tag(run.info.run_id, REPLACED_BY_TAG, by)
            self.client.set_tag(run.info.run_id, ROLE_TAG, ROLE_LOST)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
            lost.append(run.info.run_id)
        return lost


def mlflow_status(trial: Any) -> str:
    """Tune trial status -> MLflow run status."""
    if trial.status == "ERROR":
        return "FAILED"
    if trial.status == "TERMINATED":
        return "FINISHED"  # trained to the end, or stopped early by ASHA (tagged dpgdiff.stopped_early)
    return "KILLED"  # not finished: the search was interrupted (the run is reopened on resume)


def _error_text(trial: Any) -> str:
    """Tune's error text of a failed trial, after a line naming the Ray node it last ran on (`node_note`)."""
    text = None
    try:
        text = trial.get_error()
    except Exception:
        pass
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).exists():
        text = Path(trial.error_file).read_text()
    note = node_note(getattr(trial, "last_result", None) or {})
    return (f"{note}\n" if note else "") + (text or "trial failed (no error text was saved)")


def node_note(last_result: dict[str, Any]) -> str:
    """Where the trial last reported from: "Ray node ID (IP)", and "is lost" when Ray lists that node as dead.

    Ray's error for a trial whose node died names only the actor ("The actor ... is unavailable: ... Socket
    closed"), and the trial's results carry the node's IP, which several nodes may share; the trainable reports
    the node id (tune/trainable.py). Ray marks a node dead only after its health checks fail (seconds after the
    error), so a node just lost may still be listed alive."""
    node, ip = last_result.get("node_id"), last_result.get("node_ip")
    if not node:
        return ""
    where = f"Ray node {node} ({ip or 'unknown address'})"
    try:
        import ray

        dead = ray.is_initialized() and any(n.get("NodeID") == node and not n.get("Alive") for n in ray.nodes())
    except Exception:  # noqa: BLE001  no Ray connection: the note still names the node
        dead = False
    return f"the trial last ran on {where}" + (", which is lost (Ray lists it dead)" if dead else "")


def first_error_line(text: str) -> str:
    """The exception line of a traceback (its last non-empty line that names an error)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln
    return lines[-1] if lines else text


def _trial_name(trial: Any) -> str:
    return getattr(trial, "custom_dirname", None) or str(trial)


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
