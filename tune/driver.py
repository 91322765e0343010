"""The search driver: `run_search(settings)` loads the data, starts Ray, runs the Tuner, reports the result.

Steps: build the space (errors before Ray starts), load the dataset once for its card and
fingerprint, start or join Ray (building a new local MLflow store meanwhile) and check that a trial
fits on a node, save the settings (new search), open the MLflow parent run, run (or restore) the
Tuner, then test the best trial (the only trial whose test metrics are computed: trials select on
validation), print its config and per-domain validation and test metrics, attach the best checkpoint,
summary tables and Optuna plots to the parent run, and, with two objectives, print and tag the Pareto
front. Returns an exit code (EXIT_*).

The parent's summary metrics are named `search_*` (`search_best_val_mrr_sum`,
`search_best_test_x_mrr`, `search_n_trials`, ...): trial runs log `val_*` per epoch and
`best_val_mrr_sum`, and the same names on the parent would put it among the trials in overlaid charts.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

import dpgdiff
from tune import budget, leftovers, ray_internals, tracking
from tune import study as optuna_study
from tune.names import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    DATASET_TAG,
    ERROR_TAG,
    EXIT_ALL_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FINGERPRINT_TAG,
    GIT_COMMIT_TAG,
    INPUTS_LOGGED_TAG,
    LOST_TAG,
    PARETO_TAG,
    ROLE_SEARCH,
    ROLE_TAG,
    SEARCH_DONE_TAG,
    SEARCH_TAG,
    SEED_TAG,
    SELECTED_TAG,
    SOURCE_COMMIT_TAG,
    STOPPED_BY_TAG,
    STOPPED_BY_TIME_BUDGET,
    STOPPED_EARLY_TAG,
    TUNE_ENDED,
    UNFINISHED_TAG,
    WARM_START_TAG,
    TrialStatus,
)
from tune.progress import ProgressReporter
from tune.results import (
    METRIC,
    MODE,
    OBJECTIVES,
    _best_checkpoint,
    pareto_front,
    print_best,
    trial_rows,
    tune_trials,
    write_parent_artifacts,
)
from tune.serving import publish_best_model
from tune.settings import STATE_FILE, SearchError, SearchSettings
from tune.space import SearchSpace
from tune.storage import write_text
from tune.trainable import OPTUNA_TRIAL_KEY, WARM_START_KEY, TrialSpec, run_trial
from tune.warmstart import enqueue

TUNE_PACKAGE_DIR = Path(__file__).resolve().parent  # shipped to a cluster's workers with --ship-code
UI_PORT = 5000  # `mlflow ui`'s default port: the printed links assume it


class NumberedOptunaSearch(OptunaSearch):
    """OptunaSearch that adds each trial's Optuna trial number to its config (`OPTUNA_TRIAL_KEY`).

    OptunaSearch keeps Tune trial id -> Optuna trial in `_ot_trials` (saved with the searcher's state);
    the number in the config is saved with the trial itself, so the MLflow tracker (driver side, which
    cannot see the searcher) names runs by it, and a resumed search keeps it. A warm-start trial (an
    enqueued configuration, tune/warmstart.py) also gets the search it comes from (`WARM_START_KEY`). The
    trainable drops both keys (`tune.trainable.sampled_params`)."""

    def suggest(self, trial_id: str) -> Optional[dict[str, Any]]:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if not isinstance(config, dict) or ot_trial is None:
            return config
        origin = ot_trial.user_attrs.get(WARM_START_TAG)
        return {**config, OPTUNA_TRIAL_KEY: int(ot_trial.number), **({WARM_START_KEY: origin} if origin else {})}

    # With the study in its RDB (tune/study.py), a driver killed after a trial's outcome reached the study but
    # before Tune's next snapshot comes back with Tune holding the trial unfinished: its repeated reports must
    # not crash the search on a study trial that is already finished (the study keeps the outcome it has).
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not self._finished_in_study(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        if self._finished_in_study(trial_id):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _finished_in_study(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return False
        return ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished()


@dataclass(frozen=True)
class ParentRun:
    """The search's MLflow parent run and the callback that keeps one child run per trial."""

    client: Any  # MlflowClient
    experiment_id: str
    run_id: str
    tracker: tracking.MLflowTrialTracker


def run_search(settings: SearchSettings, train_fn: Optional[Callable[..., Any]] = None) -> int:
    """Run (or resume) the search `settings` describes -> exit code.

    train_fn: what each trial calls, with `dpgdiff.train`'s signature and Reporter contract
    (default `dpgdiff.train`); tests pass stand-ins here. It is not saved: pass it again to resume.
    """
    if settings.run.resuming:
        finished = finished_already(settings)
        if finished:  # resuming a FINISHED search rewrites nothing (issue 27 §2)
            print(finished, flush=True)
            return EXIT_OK
    space = settings.space  # 1. everything that can be wrong with the input is found before Ray starts
    print(space.summary(), flush=True)
    if settings.optuna_storage and not restore_saved_state(settings):  # a new searcher: a new study
        try:
            optuna_study.prepare_new_study(settings.optuna_storage, settings.name, starting_anew=settings.run.resuming)
        except optuna_study.StudyError as exc:
            raise SearchError(str(exc)) from None
    t0 = time.time()  # 2. the dataset, once on the driver: its card goes to MLflow, its fingerprint to every trial
    dataset = settings.dataset.load()
    card = dataset.card()
    print(f"\n{card}\n(loaded in {time.time() - t0:.1f} s)\n", flush=True)
    if settings.fingerprint and settings.fingerprint != dataset.fingerprint:
        raise SearchError(f"the dataset changed since search {settings.name!r} started (fingerprint "
                          f"{settings.fingerprint[:12]} -> {dataset.fingerprint[:12]}); start a new search")
    settings = settings.with_dataset(dataset).sized_from_card(card)
    space = settings.space
    check_negatives(space, dataset)  # every trial would fail at its first validation pass

    # A new local MLflow store takes seconds to build (its schema migrations): build it while Ray starts.
    store_built = in_background(tracking.create_sqlite_store, settings.tracking_uri)
    temp_dir = start_ray(settings)  # 3. Ray: local (no dashboard) or an existing cluster
    try:
        slots = check_resources(ray, settings)  # a trial that cannot fit is an error now
        if not settings.run.resuming:
            write_text(f"{settings.path}/{STATE_FILE}", json.dumps(settings.to_saved(), indent=1))
        store_built.result()  # its error, if any, is raised here
        parent = open_parent_run(settings, space, card)  # 4. MLflow parent run (reopened on resume)
        try:  # 5. Tune
            tuner = build_tuner(settings, space, parent, train_fn or dpgdiff.train, slots=slots)
            print(f"\nsearch {settings.name!r}: {budget.planned_text(settings.num_samples)}, results in "
                  f"{settings.path}" + (" (resumed)" if settings.run.resuming else ""), flush=True)
            t_fit = time.time()
            budget.record_driver(settings.path, t_fit)  # search_wall_s sums the drivers' times (a resume's included)
            spent = budget.search_wall_s(settings.path)
            clock = budget.start_clock(settings.time_budget_s, spent, settings.run.started)  # None without a budget
            # to the hooks Tune runs (a resume's, unpickled from the first driver's tuner.pkl) and the driver's tracker
            budget.give_clock(clock, ray_internals.run_config(tuner), parent.tracker)
            with ray_internals.run_config_stopper_kept():  # a resume's stopper too: the one handed the clock
                results = tuner.fit()
            budget.record_driver(settings.path, t_fit, time.time() - t_fit)
            wall = budget.search_wall_s(settings.path)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            if ray_internals.experiment_state_saved(settings.path):
                try:  # a second Ctrl-C skips Tune's own ending: close the trials' runs by Tune's saved state
                    parent.tracker.reconcile(tune_trials(settings.path))
                except Exception:  # noqa: BLE001  the parent's status below still says what happened
                    pass
            parent.client.set_tag(parent.run_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
            parent.client.set_terminated(parent.run_id, status=status)
            if ray_internals.experiment_state_saved(settings.path):  # after the traceback's cause is fixed
                print(f"\nSearch {settings.name!r} stopped on {type(exc).__name__}; its state is saved. Resume it "
                      f"with:\n    python tune/search.py --name {settings.name} --storage-path "
                      f"{settings.run.storage} --resume", file=sys.stderr, flush=True)
            raise
        return finish(results, settings, space, parent, wall, dataset, clock)
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def check_negatives(space: SearchSpace, dataset: Any) -> None:
    """The largest eval.n_negatives the space can give a trial must leave room in every validation and test case
    (dpgdiff.evaluation.check_candidate_room raises DataError, exit 2, before Ray starts)."""
    from dpgdiff.evaluation import check_candidate_room

    param = space.params.get("eval.n_negatives")
    if param is None:
        wanted, source = int(space.base_values()["eval.n_negatives"]), f"{space.source}: eval.n_negatives"
    else:
        wanted = int(max(param.values) if param.type == "categorical" else param.high)
        source = f"{space.source}: eval.n_negatives (sampled, up to)"
    check_candidate_room(dataset, wanted, source)


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


def restore_saved_state(settings: SearchSettings) -> bool:
    """Whether to `Tuner.restore` the experiment: on --resume, once Tune has saved a state there (a driver killed
    before that leaves nothing to restore, and no trial can have started: its trials begin anew)."""
    return settings.run.resuming and ray_internals.experiment_state_saved(settings.path)


def in_background(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """fn(*args) in a thread of its own -> its Future (`.result()` waits and re-raises its error)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=getattr(fn, "__name__", "task"))
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)  # the thread ends with fn; the interpreter waits for it at exit


# ------------------------------------------------------------------------------------- Ray


def start_ray(settings: SearchSettings) -> Optional[str]:
    """Start a local Ray (returns its temp dir, for removal at the end) or join `run.address` (None)."""
    run = settings.run
    runtime_env: dict[str, Any] = {}
    if run.ship_code:
        runtime_env["py_modules"] = [str(Path(dpgdiff.__file__).parent), str(TUNE_PACKAGE_DIR)]
    if run.address is not None and run.address != "local":
        ray.init(address=run.address, logging_level="WARNING", runtime_env=runtime_env or None)
        _tighten_auth_token()
        return None
    # Workers are children of this process: they import dpgdiff and tune as it does (installed package).
    # A temp folder of our own is marked with this driver's PID: if it is killed, the next search cleans up.
    temp_dir = run.ray_temp_dir or leftovers.new_temp_dir()
    # No dashboard; every other local service binds 127.0.0.1 (tune/ray_internals.py).
    session = ray_internals.init_local_ray(temp_dir, num_cpus=run.num_cpus or os.cpu_count(),
                                           include_dashboard=False, dashboard_host="127.0.0.1",
                                           logging_level="WARNING", runtime_env=runtime_env or None)
    print_ray_processes(session)
    _tighten_auth_token()  # a local Ray with token auth writes one when there is none
    return None if run.ray_temp_dir else temp_dir


def _tighten_auth_token() -> None:
    note = ray_internals.tighten_auth_token()
    if note:
        print(f"note: {note}", flush=True)


def print_ray_processes(session: Path) -> None:
    """Log the local Ray's session folder and the processes this driver started (so a supervisor can stop
    them by PID)."""
    pids = _descendant_pids(os.getpid())
    print(f"ray session {session} pids {' '.join(map(str, pids)) or '-'}", flush=True)


def _descendant_pids(root: int) -> list[int]:
    """PIDs of every process below `root` (children, grandchildren, ...), read from /proc (Linux)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])  # field 4: the ppid
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier}
        found += frontier
    return sorted(found)


def check_resources(ray_api: Any, settings: SearchSettings) -> int:
    """A trial must fit on one node, or it would stay PENDING forever (search-notes) -> how many trials fit at
    once."""
    cpu, gpu = settings.cpus_per_trial, settings.gpus_per_trial
    nodes = [n.get("Resources", {}) for n in ray_api.nodes() if n.get("Alive")]
    total = ray_api.cluster_resources()
    fits = [n for n in nodes if n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu]
    if not fits:
        have = "; ".join(f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes))
        raise SearchError(f"each trial asks for {cpu:g} CPU and {gpu:g} GPU, but no node of the cluster has that "
                          f"({have or 'no live nodes'}; total {total.get('CPU', 0):g} CPU, "
                          f"{total.get('GPU', 0):g} GPU); lower --cpus-per-trial/--gpus-per-trial")
    slots = sum(int(min(n.get("CPU", 0) // cpu, n.get("GPU", 0) // gpu if gpu else 1e9)) for n in fits)
    print(f"Ray: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU; "
          f"room for {slots} trial(s) at once", flush=True)
    return slots


# ------------------------------------------------------------------------------------- MLflow


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


# ------------------------------------------------------------------------------------- Tune


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(settings: SearchSettings, space: SearchSpace, parent: ParentRun, train_fn: Callable[..., Any],
                slots: int = 1) -> Any:
    """A new Tuner (Optuna TPE + ASHA or FIFO, MLflow callback) or, resuming, the restored one."""
    spec = TrialSpec(dataset=settings.dataset, fingerprint=settings.fingerprint, space=space, train_fn=train_fn)
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    trainable = tune.with_parameters(tune.with_resources(run_trial, resources), spec=spec)
    if restore_saved_state(settings):
        # Searcher (Optuna study), scheduler, callbacks and run config come back from the saved state; how
        # this invocation prints (--quiet) is its own.
        tuner = tune.Tuner.restore(settings.path, trainable, resume_unfinished=True,
                                   resume_errored=settings.run.retry_errored, restart_errored=False)
        ray_internals.set_progress_output(tuner, verbose=0 if settings.run.quiet else 1,
                                          progress_reporter=_progress(settings, space, slots))
        return tuner
    if settings.run.resuming:  # killed before Tune saved anything (no trial can have started): begin anew
        print(f"no Tune state was saved in {settings.path} before the search stopped: its trials start anew",
              flush=True)
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    # --time-budget: saved with the run config, so a resume keeps it (the clock itself is this driver's)
    budgeted = settings.time_budget_s is not None
    hooks = [budget.BudgetCallback(settings.epochs, settings.num_samples, min(slots, settings.max_concurrent or slots))]
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(settings, space), scheduler=_scheduler(settings), num_samples=settings.num_samples,
            max_concurrent_trials=settings.max_concurrent, reuse_actors=settings.reuse_actors,
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=settings.name, storage_path=settings.run.storage, progress_reporter=_progress(settings, space, slots),
            # Tune's default loggers are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): CSV and JSON are what
            # ResultGrid reads.
            callbacks=[parent.tracker, CSVLoggerCallback(), JsonLoggerCallback(), *(hooks if budgeted else [])],
            stop=budget.BudgetStopper() if budgeted else None,
            verbose=0 if settings.run.quiet else 1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures, fail_fast=False)),
    )


def _searcher(settings: SearchSettings, space: SearchSpace) -> Any:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials,
                                         multivariate=True, group=True)
    # The study lives in its RDB (tune/study.py), named as the search; Ray's searcher pickle then holds its URL.
    storage = optuna_study.open_storage(settings.optuna_storage) if settings.optuna_storage else None
    study = dict(sampler=sampler, study_name=settings.name, storage=storage)
    if len(settings.objectives) > 1:  # Optuna sees every objective (TPE is multi-objective: MOTPE)
        searcher = NumberedOptunaSearch(space=space, metric=list(settings.objectives),
                                        mode=[OBJECTIVES[o] for o in settings.objectives], **study)
    else:
        searcher = NumberedOptunaSearch(space=space, metric=METRIC, mode=MODE, **study)
    # A new searcher only (a resume restores it with its queue): the warm-start configurations come first
    enqueue(searcher, settings.warm_start)
    return searcher


def _scheduler(settings: SearchSettings) -> Any:
    """ASHA or FIFO, each also making Tune save its experiment state whenever it adds a trial (a killed driver
    then loses no trial: tune/ray_internals.py). A multi-objective search runs FIFO: ASHA ranks on one metric."""
    if settings.scheduler != "asha" or len(settings.objectives) > 1:
        return ray_internals.SnapshotFIFOScheduler()
    return ray_internals.SnapshotASHAScheduler(
        time_attr="epoch", metric=METRIC, mode=MODE, max_t=settings.epochs,
        grace_period=min(settings.grace_period, settings.epochs), reduction_factor=settings.reduction_factor,
        stop_last_trials=False)


def _progress(settings: SearchSettings, space: SearchSpace, slots: int = 1) -> Optional[Any]:
    """The trial table printed while the search runs (None with --quiet); slots: trials the cluster fits at once."""
    if settings.run.quiet:
        return None
    preferred = ("model.dim", "diffusion.steps", "train.lr", "loss.lambda_cl", "loss.lambda_diff")
    params = ([p for p in preferred if p in space.params] + [p for p in space.params if p not in preferred])[:4]
    return ProgressReporter(
        max_epochs=settings.epochs, num_samples=settings.num_samples, early_stopping=settings.scheduler == "asha",
        concurrency=min(slots, settings.max_concurrent or slots,
                        slots if settings.num_samples == budget.UNTIL_BUDGET else settings.num_samples),
        metric_columns={"epoch": "epoch", "train_loss": "loss", "val_x_mrr": "val MRR X",
                        "val_y_mrr": "val MRR Y", METRIC: "val MRR sum",
                        **({"infer_ms": "ms/1k val"} if len(settings.objectives) > 1 else {})},
        parameter_columns={p: p.split(".", 1)[1] for p in params} | ({WARM_START_KEY: "warm start"}
                                                                      if settings.warm_start else {}),
        max_report_frequency=15, metric=METRIC, mode=MODE, sort_by_metric=True, max_progress_rows=12,
        max_column_length=40)  # a --warm-start config file's path whole (Tune cuts at 20 and adds a hash)


# ------------------------------------------------------------------------------------- the end


def finish(results: Any, settings: SearchSettings, space: SearchSpace, parent: ParentRun, wall: float,
           dataset: Any, clock: Optional[budget.BudgetClock]) -> int:
    """Reconcile MLflow with Tune, print the outcome, attach artifacts and summary metrics -> exit code.
    clock: this driver's --time-budget clock (None without a budget)."""
    rows = trial_rows(results)
    trials = tune_trials(settings.path)
    parent.tracker.reconcile(trials)  # nothing stays RUNNING, whatever happened to the callbacks
    for row in rows:  # --time-budget: trials it stopped are a result, like finished ones (tune/budget.py)
        if row["status"] == TrialStatus.STOPPED_EARLY and budget.stopped_by_budget(clock, row["trial_id"]):
            row["status"] = TrialStatus.STOPPED_BY_BUDGET
    ended_by_budget = budget.budget_ended(clock)
    if settings.optuna_storage:  # the study agrees with Tune: a trial asked before a kill and lost is FAIL there
        report_study(settings, trials, rows, ended_by_budget)
    run_ids = {t.trial_id: parent.tracker.run_id(t, create=False) for t in trials}
    for row in rows:
        row["run_id"] = run_ids.get(row["trial_id"])
    done = [r for r in rows if r["status"] == TrialStatus.FINISHED]
    failed = [r for r in rows if r["status"] == TrialStatus.ERROR]
    counts = outcome_counts(rows, trials, settings.num_samples, ended_by_budget)
    until_budget = settings.num_samples == budget.UNTIL_BUDGET  # no count: the budget decided how many ran
    print(f"\n{len(rows) if until_budget else settings.num_samples} trial(s): "
          + ", ".join(f"{n} {what}" for what, n in counts.items() if n or what in DONE_OUTCOMES)
          + (f" (FINISHED in MLflow, tagged {STOPPED_EARLY_TAG})" if counts["stopped early by ASHA"] else "")
          + (f" ({STOPPED_BY_TAG}={STOPPED_BY_TIME_BUDGET})" if counts.get("stopped by the time budget") else "")
          + f"; wall time {wall:.1f} s", flush=True)

    client, run_id = parent.client, parent.run_id
    unfinished = [t for t in trials if t.status not in TUNE_ENDED]
    # A search bounded by its budget only is complete when the budget ended it, whatever the count.
    short = until_budget or len(trials) < settings.num_samples
    if unfinished or (short and not ended_by_budget):
        client.set_tag(run_id, UNFINISHED_TAG, "1")
        client.set_terminated(run_id, status="KILLED")
        done_count = sum(counts.get(k, 0) for k in (*DONE_OUTCOMES, *budget.BUDGET_OUTCOMES))
        print(f"\nSearch {settings.name!r} is UNFINISHED ({done_count} of "
              f"{budget.planned_text(settings.num_samples)} done). Resume it with:\n"
              f"    python tune/search.py --name {settings.name} --storage-path {settings.run.storage} --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    # Every trial ended: what an interrupted session said of the parent no longer holds.
    stale = [k for k in (UNFINISHED_TAG, ERROR_TAG) if k in client.get_run(run_id).data.tags]
    for key in stale:
        client.delete_tag(run_id, key)

    if not done and not any(r["status"] in (TrialStatus.STOPPED_EARLY, TrialStatus.STOPPED_BY_BUDGET) for r in rows):
        first = failed[0] if failed else None
        text = first.get("error", "") if first else "no trial reported a result"
        client.set_tag(run_id, ERROR_TAG, text[:5000])
        client.set_terminated(run_id, status="FAILED")
        print(f"\nerror: every trial failed. First error (trial {first['trial_id'] if first else '-'}):\n"
              f"{tracking.first_error_line(text)}\n\n{text[-3000:]}", file=sys.stderr)
        return EXIT_ALL_FAILED

    # a trial the budget stopped competes with the finished ones, at its best epoch so far
    candidates = done + [r for r in rows if r["status"] == TrialStatus.STOPPED_BY_BUDGET and r.get(METRIC) is not None]
    best = max(candidates or rows, key=lambda r: r.get(METRIC, float("-inf")))
    test_ranks = None
    if not best.get("test"):  # selection was on validation; now, and only for this trial, the test set
        best["test"], test_ranks = evaluate_selected_trial(best, dataset)
    print_best(best, space)
    front = report_pareto_front(parent, rows, space, settings.objectives) if len(settings.objectives) > 1 else []
    _log_best(parent, rows, best, space, wall, settings, dataset, test_ranks, n_pareto=len(front))
    print(f"\nMLflow parent run {run_id}: best checkpoint, config, trials.csv/.md and Optuna plots attached. "
          f"Browse with:\n    mlflow ui --backend-store-uri {settings.tracking_uri} --host 127.0.0.1\n"
          + ui_links(parent.experiment_id, run_id, settings.name), flush=True)
    return EXIT_OK


def report_study(settings: SearchSettings, trials: list[Any], rows: list[dict[str, Any]],
                 ended_by_budget: bool = False) -> None:
    """Close the study's trials that Tune lost or the time budget stopped (tune/study.py; ended_by_budget: the
    --time-budget ended the search); say where it is."""
    from tune.trainable import OPTUNA_TRIAL_KEY

    numbers = [int(t.config[OPTUNA_TRIAL_KEY]) for t in trials if (t.config or {}).get(OPTUNA_TRIAL_KEY) is not None]
    if ended_by_budget:  # Tune stops these without telling the searcher: the study gets their last values
        last = {r["optuna_trial"]: [r.get(o, (r["result"].metrics or {}).get(o)) for o in settings.objectives]
                for r in rows if r.get("optuna_trial") is not None}  # val_mrr_sum: its best epoch's, as selected
        optuna_study.close_budget_stopped(settings.optuna_storage, settings.name, last)
    lost = optuna_study.close_lost_trials(settings.optuna_storage, settings.name, numbers)
    if lost:
        print(f"Optuna study: trial(s) {', '.join(map(str, lost))} were asked before the driver was killed and "
              f"Tune lost them: FAIL, with user attribute {LOST_TAG}", flush=True)
    url = optuna_study.shown(settings.optuna_storage)
    print(f"Optuna study {settings.name!r} in {url}; browse with:\n    optuna-dashboard {url}", flush=True)


def ui_links(experiment_id: str, parent_run_id: str, search: str, port: int = UI_PORT) -> str:
    """The `mlflow ui` pages of a search: its parent run, and the runs list of this search with every trial
    on its own row. The list uses MLflow 3's runs route, `#/experiments/<id>/runs?...`, which honours the
    query (the experiment's own route, `#/experiments/<id>?...`, ignores it: no filter, sorted by date);
    `workflowType=machine_learning` in both links opens the classic (model training) view: MLflow 3.17.2 keeps
    the GenAI / model training choice in the browser, and a fresh one shows the GenAI overview, with runs as
    "Evaluation runs" (bench/ui_links_check.py). With a search filter the UI lists the trials flat (it nests
    children only without a filter), here sorted by best_val_mrr_sum (the parent, which has no such metric,
    comes last)."""
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


def evaluate_selected_trial(best: dict[str, Any], dataset: Any) -> tuple[dict[str, float], Any]:
    """Evaluate the selected trial on the test cases -> (test metrics, EvalResult), ({}, None) when it has no
    checkpoint. Its final checkpoint's best.pt (a stopped trial: its last training checkpoint) is loaded and
    evaluated with the trainer's own evaluator and the final sampler (dpgdiff.training.evaluate_model)."""
    from dpgdiff.training import evaluate_model, load_model
    from dpgdiff.training.reproducibility import resolve_device

    checkpoint = _best_checkpoint(best["result"])
    if checkpoint is None:
        print(f"note: trial {best['trial_id']} has no checkpoint: no test metrics", file=sys.stderr)
        return {}, None
    t0 = time.time()
    with checkpoint.as_directory() as folder:
        path = Path(folder, "best.pt") if Path(folder, "best.pt").is_file() else Path(folder)
        model, config, _ = load_model(path, dataset, device=resolve_device("auto"))
        result = evaluate_model(model, dataset, "test", config)
    print(f"\nTested the selected trial {best['trial_id']} on {dataset.name} test "
          f"({time.time() - t0:.1f} s)", flush=True)
    return result.flat("test"), result


def report_pareto_front(parent: ParentRun, rows: list[dict[str, Any]], space: SearchSpace,
                        objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    """Print the Pareto front of a multi-objective search and tag its child runs `dpgdiff.pareto=1`."""
    front = pareto_front(rows, space, objectives)
    for r in front:
        r["pareto"] = True
        if r.get("run_id"):
            parent.client.set_tag(r["run_id"], PARETO_TAG, "1")
    width = max(len(o) for o in objectives)
    versus = " vs ".join(f"{o} ({OBJECTIVES[o]})" for o in objectives)
    print(f"\nPareto front ({len(front)} of {len(rows)} trials; {versus}; tagged {PARETO_TAG}=1 in MLflow):")
    print("| optuna trial | trial | " + " | ".join(f"{o:>{width}}" for o in objectives) + " | MLflow run |")
    print("|---:|---|" + "---:|" * len(objectives) + "---|")
    for r in front:
        number = r.get("optuna_trial")
        print(f"| {'-' if number is None else number} | {r['trial_id']} | "
              + " | ".join(f"{r.get(o, float('nan')):>{width}.4f}" for o in objectives) + f" | {r.get('run_id')} |")
    return front


DONE_OUTCOMES = ("finished", "stopped early by ASHA", "failed")  # what a resume does not run again


def outcome_counts(rows: list[dict[str, Any]], trials: list[Any], planned: int,
                   ended_by_budget: bool = False) -> dict[str, int]:
    """Trials by outcome: DONE_OUTCOMES, then interrupted (Tune's saved state has it unfinished, or does not know
    it: a resume runs it) and not started. Tune's saved state decides what is done, so the summary line and the
    UNFINISHED line count alike. ended_by_budget: the --time-budget ended the search, so the trials it left
    unstarted (and those it stopped before their first result) are done too."""
    saved = {t.trial_id: t.status for t in trials}
    counts = dict.fromkeys((*DONE_OUTCOMES, *(budget.BUDGET_OUTCOMES if ended_by_budget else ()), "interrupted",
                            "not started"), 0)
    for row in rows:
        status = saved.get(row["trial_id"])
        if status not in TUNE_ENDED:
            counts["interrupted"] += 1
        elif status == "ERROR" or row["status"] == TrialStatus.ERROR:
            counts["failed"] += 1
        elif row["status"] == TrialStatus.STOPPED_BY_BUDGET:
            counts["stopped by the time budget"] += 1
        elif row["status"] == TrialStatus.NOT_RUN and ended_by_budget:
            counts["not started (time budget)"] += 1
        else:
            counts["finished" if row["status"] == TrialStatus.FINISHED else "stopped early by ASHA"] += 1
    counts["not started (time budget)" if ended_by_budget else "not started"] += max(0, planned - len(rows))
    return counts


def _log_best(parent: ParentRun, rows: list[dict[str, Any]], best: dict[str, Any], space: SearchSpace,
              wall: float, settings: SearchSettings, dataset: Any, test_ranks: Any = None, n_pareto: int = 0) -> None:
    """Attach artifacts and summary metrics (`search_*`) to the parent run, register the best trial as an
    MLflow model (tune/serving.py), log its test metrics on its own run, tag it, close the parent FINISHED."""
    from mlflow.entities import Metric

    client, run_id = parent.client, parent.run_id
    with tempfile.TemporaryDirectory() as tmp:
        write_parent_artifacts(Path(tmp), rows, best, space, settings.objectives)
        if test_ranks is not None:  # per-case test ranks of the selected trial (paired tests, tune/confirm.py)
            test_ranks.save_ranks(Path(tmp) / "best" / "test_ranks.npz")
        client.log_artifacts(run_id, tmp)
        publish_best_model(settings.tracking_uri, run_id, Path(tmp) / "best" / "checkpoint", dataset, best.get(METRIC),
                           search=settings.name)
    now = int(time.time() * 1000)
    test = best.get("test", {})
    if best.get("run_id") and test:  # the selected trial's run: test metrics at its best epoch, like a trained run
        step = int(best.get("best_epoch") or 0)
        logged = client.get_run(best["run_id"]).data.metrics  # a resume after a kill in these last steps: once
        fresh = [Metric(k, float(v), now, step) for k, v in test.items() if k not in logged]
        if fresh:
            client.log_batch(best["run_id"], metrics=fresh)
    summary = {"search_best_" + k: v for k, v in {**best.get("best_val", {}), **test}.items()}
    if best.get("infer_ms") is not None:
        summary["search_best_infer_ms"] = best["infer_ms"]
    summary.update(search_n_trials=len(rows), search_n_finished=sum(r["status"] == TrialStatus.FINISHED for r in rows),
                   search_n_stopped_early=sum(r["status"] == TrialStatus.STOPPED_EARLY for r in rows),
                   search_n_stopped_by_budget=sum(r["status"] == TrialStatus.STOPPED_BY_BUDGET for r in rows),
                   search_n_failed=sum(r["status"] == TrialStatus.ERROR for r in rows), search_wall_s=wall)
    if len(settings.objectives) > 1:
        summary["search_n_pareto"] = n_pareto
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    client.set_tag(run_id, BEST_TRIAL_TAG, best["trial_id"])
    if best.get("run_id"):
        client.set_tag(run_id, BEST_RUN_TAG, best["run_id"])
        client.set_tag(best["run_id"], SELECTED_TAG, "1")  # the search's pick: the one tested run
    client.set_tag(run_id, SEARCH_DONE_TAG, "1")  # the last step: a resume has nothing left to do
    client.set_terminated(run_id, status="FINISHED")
