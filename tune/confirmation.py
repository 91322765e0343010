"""Confirmation runs of finished searches: the jobs (search x variant x seed), their MLflow tracking, the Tune run.

The command line is tune/confirm.py; this module is its driver (as tune/driver.py is tune/search.py's).
A job is one search's best configuration (rebuilt from the search's saved settings and its best trial's
sampled values, as chosen on validation; or another trial's, named with --trial), or a variant of it, with one
seed. Every job is one trial of the
search's own trainable (`tune.trainable.run_trial`), tracked as a child of that search's MLflow parent run
with role `confirmation`, tags `dpgdiff.variant` / `dpgdiff.seed` / `dpgdiff.confirms_run`, and the
artifacts `test_ranks.npz` (per-case test ranks, for tune/report.py's paired tests), `config.yaml` and
`final.json`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import ray
from ray import tune

import dpgdiff
from dpgdiff.config import Config, parse_assignment
from dpgdiff.training.loop import RANKS_FILE, STEPS_CURVE
from tune import tracking
from tune.names import (
    BEST_RUN_TAG,
    CONFIRMATION_SEED_TAG,
    CONFIRMATION_TAG,
    CONFIRMS_TAG,
    EXIT_ALL_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    OPTUNA_TAG,
    ROLE_CONFIRMATION,
    ROLE_SEARCH,
    ROLE_TAG,
    SAMPLED_TAG,
    SEARCH_TAG,
    TRIAL_TAG,
    VARIANT_TAG,
)
from tune.progress import ProgressReporter
from tune.ray_start import check_resources, start_ray
from tune.settings import RunOptions, SearchError, SearchSettings
from tune.storage import write_text
from tune.trainable import FINAL_MARKER, TrialSpec, run_trial
from tune.tuner import restore_saved_state

CONFIRM_STATE = "dpgdiff_confirm.json"  # beside Tune's experiment state: the jobs, for --resume
BEST = "best"  # the variant that is the best configuration itself
# Table 3 (the paper's ablations) at the best configuration; a switched-off component is not built.
ABLATIONS = {
    "-Tri-CL": {"model.tri_cl": False},
    "-G": {"model.guidance": False},
    "-DE": {"model.disentangled_encoder": False},
    "Diff": {"model.tri_cl": False, "model.guidance": False, "model.disentangled_encoder": False},
    # Issue 23's control (not in the paper's Table 3): the same network without the diffusion (x_t ≡ 0, no
    # timestep embedding, no L_diff). The full model must beat it for the diffusion to pay.
    "-Diffusion": {"model.diffusion": False, "loss.lambda_diff": 0.0},
}
# Copied from a trial's final checkpoint to its run (MLflowTrialTracker already logs the run's config.yaml).
ARTIFACTS = (RANKS_FILE, FINAL_MARKER)
NOT_EXPORTED = ("train.num_threads", "train.device")  # per machine, not part of a configuration


@dataclass(frozen=True)
class Job:
    """One confirmation trial: a search's best configuration (or a variant of it) with one seed."""

    search: str
    parent_run_id: str  # the search's MLflow parent run: the trial's run is its child
    best_run_id: str  # the search trial being confirmed
    variant: str  # BEST, or a variant label
    seed: int
    config: Config

    @property
    def key(self) -> str:
        return f"{self.search}|{self.variant}|seed={self.seed}"

    def to_saved(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"},
                "config": self.config.to_dict()}

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "Job":
        return cls(**{**data, "config": Config.from_saved(data["config"], source=f"{CONFIRM_STATE}: {data['search']}")})


class ConfirmationJobs:
    """The `space` of a confirmation experiment: a trial's config is {"job": key}; `resolve` gives its Config."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = {j.key: j for j in jobs}

    def resolve(self, sampled: dict[str, Any], source: Optional[str] = None) -> Config:
        return self.jobs[sampled["job"]].config


# ------------------------------------------------------------------------------------- jobs from MLflow


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """'LABEL:section.key=value[,section.key=value...]' -> (label, overrides)."""
    label, sep, body = text.partition(":")
    if not sep or not label.strip() or not body.strip() or "|" in label:
        raise SearchError(f"--variant {text!r}: expected LABEL:section.key=value[,section.key=value...]")
    return label.strip(), dict(parse_assignment(a.strip(), f"--variant {label}") for a in body.split(","))


def parse_trial(text: str) -> tuple[str, str]:
    """--trial SEARCH:TRIAL -> (search, trial)."""
    search, sep, trial = text.rpartition(":")
    if not sep or not search.strip() or not trial.strip():
        raise SearchError(f"--trial {text!r}: expected SEARCH:TRIAL, TRIAL being the Optuna trial number (trial_015_... "
                          "in the run name: 15), the Tune trial id or the MLflow run id")
    return search.strip(), trial.strip()


def trial_run_id(client: Any, experiment_id: str, parent: Any, trial: str) -> str:
    """The MLflow run id of one trial of the search `parent`: `trial` is its Optuna number, Tune trial id or run id."""
    search = parent.data.tags.get(SEARCH_TAG)
    found = [r for r in tracking.child_runs(client, experiment_id, parent.info.run_id)
             if trial in (r.info.run_id, r.data.tags.get(TRIAL_TAG))
             or (trial.isdigit() and r.data.tags.get(OPTUNA_TAG) == str(int(trial)))]
    if len(found) != 1:
        raise SearchError(f"--trial {search}:{trial}: {len(found) or 'no'} trial runs of search {search!r} match; give "
                          "the Optuna trial number (trial_015_... in the run name: 15), the Tune trial id or the run id")
    if found[0].info.status != "FINISHED":
        raise SearchError(f"--trial {search}:{trial}: its run {found[0].info.run_id} is {found[0].info.status}, "
                          "not FINISHED: only a trial with results can be confirmed")
    return found[0].info.run_id


def best_configuration(client: Any, experiment_id: str, search: str, data_dir: Optional[str],
                       trial: Optional[str] = None) -> tuple[SearchSettings, Any, str, Config]:
    """(the search's settings, its parent run, the confirmed trial's run id, its resolved Config): the trial the
    search selected on validation, or `trial` (--trial: a configuration chosen otherwise, e.g. the one committed)."""
    parents = tracking.find_runs(client, experiment_id, {SEARCH_TAG: search, ROLE_TAG: ROLE_SEARCH})
    if not parents:
        raise SearchError(f"--name {search!r}: no such search in this MLflow store")
    parent = parents[0]
    run_id = parent.data.tags.get(BEST_RUN_TAG)
    if parent.info.status != "FINISHED" or not run_id:
        raise SearchError(f"search {search!r} has not finished (parent run {parent.info.run_id} is "
                          f"{parent.info.status}); finish it with tune/search.py --name {search} --resume")
    if trial is not None:
        run_id = trial_run_id(client, experiment_id, parent, trial)
    with tempfile.TemporaryDirectory() as tmp:
        saved = json.loads(Path(client.download_artifacts(parent.info.run_id, "search_settings.json", tmp)).read_text())
    settings = SearchSettings.from_saved(saved, RunOptions(storage="ray_results"),
                                         f"MLflow run {parent.info.run_id}: search_settings.json")
    if data_dir:  # the data may live elsewhere on this machine than where the search ran
        settings = settings.replace(dataset=dataclasses.replace(settings.dataset, data_dir=str(Path(data_dir).resolve())))
    sampled = json.loads(client.get_run(run_id).data.tags.get(SAMPLED_TAG, "{}"))
    config = settings.space.resolve(sampled, source=f"search {search!r}, run {run_id}")
    return settings, parent, run_id, config


class NothingToConfirm(SearchError):
    """Every requested (search, variant, seed) has its FINISHED confirmation run already."""


def build_jobs(client: Any, experiment_id: str, bests: dict[str, tuple[SearchSettings, Any, str, Config]],
               seeds: Sequence[int], variants: dict[str, dict[str, Any]],
               ablations: bool) -> tuple[SearchSettings, list[Job]]:
    """Every (search, variant, seed) job, and the first search's settings (dataset, resources per trial).
    bests: search -> its `best_configuration` (the trial to confirm)."""
    jobs: list[Job] = []
    first: Optional[SearchSettings] = None
    for name, (settings, parent, run_id, best) in bests.items():
        if first is None:
            first = settings
        elif settings.fingerprint != first.fingerprint:
            raise SearchError(f"search {name!r} ran on other data than {first.name!r} (dataset fingerprint "
                              f"{str(settings.fingerprint)[:12]} vs {str(first.fingerprint)[:12]}): confirm them separately")
        own = dict(variants)
        if ablations and best.model.name == "dpgdiff":
            own.update(ABLATIONS)
        done = {(r.data.tags.get(VARIANT_TAG), r.data.tags.get(CONFIRMATION_SEED_TAG))
                for r in tracking.child_runs(client, experiment_id, parent.info.run_id, role=ROLE_CONFIRMATION)
                if r.info.status == "FINISHED" and r.data.tags.get(CONFIRMS_TAG) == run_id}
        for label, overrides in {BEST: {}, **own}.items():
            config = best.with_overrides(dict(overrides), source=f"--variant {label}") if overrides else best
            for seed in seeds:
                if (label, str(seed)) in done:  # confirmed already (an earlier confirmation of this trial)
                    print(f"{name}/{label} seed {seed}: already confirmed, skipped", flush=True)
                    continue
                jobs.append(Job(name, parent.info.run_id, run_id, label, seed,
                                config.with_overrides({"train.seed": seed}, source="--seed")))
    assert first is not None
    if not jobs:
        raise NothingToConfirm("every requested (search, variant, seed) is confirmed already; tune/report.py shows them")
    jobs.sort(key=lambda j: j.seed)  # seed-major: an interrupted confirmation has every configuration's first seeds
    return first, jobs


def export_config(config: Config, path: Path, search: str, best_run_id: str, command: str,
                  trial: Optional[str] = None) -> None:
    """The confirmed configuration as a `python -m dpgdiff train --config` file: the fields its model reads
    (`Config.to_file_dict`), machine-specific ones left out, under a first line with its label (`Config.label()`).
    trial: the trial named with --trial (None: the search's best)."""
    data = config.to_file_dict()
    for dotted in NOT_EXPORTED:
        section, key = dotted.split(".")
        data[section].pop(key, None)
    import yaml

    chosen = f"trial {trial}, named with tune/confirm.py --trial" if trial else "its best configuration, chosen on validation"
    header = (f"# variant: {config.label()}\n"
              f"# Search {search}, MLflow run {best_run_id}: {chosen}.\n"
              f"#   {command}\n")
    write_text(str(path), header + yaml.safe_dump(data, sort_keys=False))


# ------------------------------------------------------------------------------------- MLflow callback


class ConfirmationTracker(tune.Callback):
    """One MLflowTrialTracker per search parent run; each trial goes to its job's parent, role confirmation."""

    def __init__(self, tracking_uri: str, experiment_id: str, jobs: Sequence[Job], confirmation: str) -> None:
        space = ConfirmationJobs(jobs)
        self.jobs = {j.key: (j.parent_run_id, j.best_run_id, j.variant, j.seed) for j in jobs}
        # CONFIRMATION_TAG tells this confirmation's runs from other confirmations under the same parent.
        self.trackers = {j.parent_run_id: tracking.MLflowTrialTracker(
            tracking_uri, experiment_id, j.parent_run_id, j.search, space, extra_tags={CONFIRMATION_TAG: confirmation},
            role=ROLE_CONFIRMATION) for j in jobs}

    def _tracker(self, trial: Any) -> tracking.MLflowTrialTracker:
        return self.trackers[self.jobs[trial.config["job"]][0]]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tracker = self._tracker(trial)
        tracker.on_trial_start(iteration, trials, trial, **info)
        _, best_run, variant, seed = self.jobs[trial.config["job"]]
        run_id = tracker.run_id(trial)
        for key, value in ((VARIANT_TAG, variant), (CONFIRMATION_SEED_TAG, str(seed)), (CONFIRMS_TAG, best_run)):
            tracker.client.set_tag(run_id, key, value)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._tracker(trial).on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tracker(trial).on_trial_recover(iteration, trials, trial, **info)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tracker(trial).on_trial_error(iteration, trials, trial, **info)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tracker = self._tracker(trial)
        if trial.checkpoint is not None:  # the final checkpoint: per-case ranks, final metrics
            with trial.checkpoint.as_directory() as folder:
                for name in ARTIFACTS:
                    if Path(folder, name).exists():
                        tracker.client.log_artifact(tracker.run_id(trial), str(Path(folder, name)))
        tracker.on_trial_complete(iteration, trials, trial, **info)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for parent, tracker in self.trackers.items():
            tracker.reconcile([t for t in trials if self.jobs[t.config["job"]][0] == parent])


# ------------------------------------------------------------------------------------- running


def run_confirmation(settings: SearchSettings, jobs: Sequence[Job], experiment_id: str) -> int:
    """Run (or resume) the confirmation trials -> exit code (tune/names.py's EXIT_*)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    dataset = settings.dataset.load()
    if settings.fingerprint and dataset.fingerprint != settings.fingerprint:
        raise SearchError(f"the data at {settings.dataset.data_dir} is not what the searches ran on (fingerprint "
                          f"{dataset.fingerprint[:12]}, searches {settings.fingerprint[:12]})")
    spec = TrialSpec(dataset=settings.dataset, fingerprint=settings.fingerprint, space=ConfirmationJobs(jobs),
                     # test metrics, per-case ranks and RQ4's test at K = 1, 2, 4, 8: what is confirmed
                     train_fn=dpgdiff.train, evaluate_test=True, test_steps=STEPS_CURVE)
    trainable = tune.with_parameters(
        tune.with_resources(run_trial, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}), spec=spec)
    temp_dir = start_ray(settings)
    try:
        check_resources(ray, settings)
        if restore_saved_state(settings):
            tuner = tune.Tuner.restore(settings.path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            epochs = max(j.config.train.epochs for j in jobs)
            tuner = tune.Tuner(
                trainable, param_space={"job": tune.grid_search([j.key for j in jobs])},
                tune_config=tune.TuneConfig(num_samples=1, reuse_actors=settings.reuse_actors,
                                            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=settings.name, storage_path=settings.run.storage, verbose=0 if settings.run.quiet else 1,
                    callbacks=[ConfirmationTracker(settings.tracking_uri, experiment_id, jobs, settings.name),
                               CSVLoggerCallback(), JsonLoggerCallback()],
                    progress_reporter=None if settings.run.quiet else ProgressReporter(
                        max_epochs=epochs, num_samples=len(jobs), early_stopping=False, max_report_frequency=30,
                        metric_columns={"epoch": "epoch", "val_mrr_sum": "val MRR sum"},
                        parameter_columns={"job": "job"}, max_column_length=60),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    failure_config=tune.FailureConfig(max_failures=settings.max_failures, fail_fast=False)))
        results = tuner.fit()
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    finished = sum(1 for r in results if not r.error and (r.metrics or {}).get("final"))
    failed = sum(1 for r in results if r.error)
    print(f"\n{len(jobs)} confirmation trial(s): {finished} finished, {failed} failed", flush=True)
    if finished + failed < len(jobs):
        print(f"UNFINISHED: continue with python tune/confirm.py --confirm-name {settings.name} --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if finished else EXIT_ALL_FAILED


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def tune_state_exists(path: str) -> bool:
    """Whether a Tune experiment that could be restored lives at `path`."""
    return bool(tune.Tuner.can_restore(path))
