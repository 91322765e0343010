"""The search's Tuner: Optuna's TPE searcher, ASHA or FIFO, the MLflow and budget hooks and the trial table; or,
on resume, the Tuner restored from Tune's saved state with this invocation's trial table."""

from __future__ import annotations

import pickle
import warnings
from typing import Any, Callable, Optional

from optuna.storages import _CachedStorage
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tune import budget, ray_internals
from tune import study as optuna_study
from tune.errors import StoreError
from tune.names import WARM_START_TAG
from tune.parent_run import ParentRun
from tune.progress import ProgressReporter
from tune.stores import UNRESUMABLE
from tune.results import METRIC, MODE, OBJECTIVES
from tune.settings import SearchSettings
from tune.space import SearchSpace
from tune.trainable import OPTUNA_TRIAL_KEY, WARM_START_KEY, TrialSpec, run_trial
from tune.warmstart import enqueue


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
    # Only the trials live at the save that a resume restores can be such a trial, so only those are looked up
    # in the study (once each): a lookup per result cost the driver a database read per report (issue 41).
    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._live_at_save = {tid for tid in self._ot_trials if tid not in self._completed_trials}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not self._finished_in_study(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        if self._finished_in_study(trial_id):
            self._completed_trials.add(trial_id)
        else:
            super().on_trial_complete(trial_id, result=result, error=error)
        # Its outcome is in the study: the handle is not needed again (OptunaSearch checks `_completed_trials` before
        # it looks one up), and kept it would add about 1 KB per finished trial to every save (`save`).
        self._ot_trials.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        """OptunaSearch's save (its attributes, pickled), but a study in an RDB goes without Optuna's in-memory copy
        of its trials (`_CachedStorage`): the database holds them, and the restored study reads them from there, as
        `optuna.load_study` does. Tune saves the searcher with every experiment snapshot; with that copy each save
        grew by about 1.2 KB per trial of the search (BENCHMARKS.md, "Issue 41")."""
        with open(checkpoint_path, "wb") as handle:
            _UncachedStudyPickler(handle).dump(self.__dict__.copy())

    def _finished_in_study(self, trial_id: str) -> bool:
        """Whether a trial live at the restored save has its outcome in the study already (see `restore`)."""
        live_at_save = self.__dict__.get("_live_at_save", set())
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id not in live_at_save or ot_trial is None or trial_id in self._completed_trials:
            return False
        finished = ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished()
        if not finished:  # this driver reports its outcome from now on: no need to look again
            live_at_save.discard(trial_id)
        return finished


class _UncachedStudyPickler(pickle.Pickler):
    """Pickles an Optuna `_CachedStorage` (how a study holds its RDB storage) as a new one around the same database,
    without its cache of the study's trials."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _CachedStorage):
            return _CachedStorage, (obj._backend,)
        return NotImplemented


def restore_saved_state(settings: SearchSettings) -> bool:
    """Whether to `Tuner.restore` the experiment: on --resume, once Tune has saved a state there (a driver killed
    before that leaves nothing to restore, and no trial can have started: its trials begin anew)."""
    return settings.run.resuming and ray_internals.experiment_state_saved(settings.path)


def trial_limit(settings: SearchSettings, slots: int) -> int:
    """Tune's `max_concurrent_trials`: --max-concurrent, else the trials the cluster fits at once (`slots`, from
    tune/ray_start.py's check_resources).

    Never None: without a limit, Tune keeps one suggested trial pending at a time when a searcher is used
    (TuneController's `_get_max_pending_trials` is 1 unless the searcher is wrapped in a ConcurrencyLimiter), so
    each trial was suggested, snapshotted and started only once the one before it had started (BENCHMARKS.md,
    "Issue 41"). With the limit, Tune wraps the searcher in a ConcurrencyLimiter and keeps up to that many trials
    pending: the free slots fill in one driver step, and one experiment-state save covers every trial that step
    added. The searcher is still asked only while Tune's trial count is under --num-samples (SearchGenerator),
    and never for more trials than the limit at once."""
    return max(1, settings.max_concurrent or slots)


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
        try:
            tuner = tune.Tuner.restore(settings.path, trainable, resume_unfinished=True,
                                       resume_errored=settings.run.retry_errored, restart_errored=False)
        except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, IndexError) as exc:
            raise StoreError(f"{settings.path}/tuner.pkl: Tune cannot restore the search from it ({type(exc).__name__}: "
                             f"{str(exc)[:300]}); {UNRESUMABLE}") from None
        ray_internals.set_progress_output(tuner, verbose=0 if settings.run.quiet else 1,
                                          progress_reporter=_progress(settings, space, slots))
        return tuner
    if settings.run.resuming:  # killed before Tune saved anything (no trial can have started): begin anew
        print(f"no Tune state was saved in {settings.path} before the search stopped: its trials start anew",
              flush=True)
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    # --time-budget: saved with the run config, so a resume keeps it (the clock itself is this driver's)
    budgeted = settings.time_budget_s is not None
    hooks = [budget.BudgetCallback(settings.epochs, settings.num_samples, min(slots, trial_limit(settings, slots)))]
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(settings, space), scheduler=_scheduler(settings), num_samples=settings.num_samples,
            max_concurrent_trials=trial_limit(settings, slots), reuse_actors=settings.reuse_actors,
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
        concurrency=min(slots, trial_limit(settings, slots),
                        slots if settings.num_samples == budget.UNTIL_BUDGET else settings.num_samples),
        metric_columns={"epoch": "epoch", "train_loss": "loss", "val_x_mrr": "val MRR X",
                        "val_y_mrr": "val MRR Y", METRIC: "val MRR sum",
                        **({"infer_ms": "ms/1k val"} if len(settings.objectives) > 1 else {})},
        parameter_columns={p: p.split(".", 1)[1] for p in params} | ({WARM_START_KEY: "warm start"}
                                                                      if settings.warm_start else {}),
        max_report_frequency=15, metric=METRIC, mode=MODE, sort_by_metric=True, max_progress_rows=12,
        max_column_length=40)  # a --warm-start config file's path whole (Tune cuts at 20 and adds a hash)
