"""The names the search layer shares: trial statuses, MLflow tag names and values, exit codes.

Each of these strings is written in one place and read in another, often by another process or a later version
of this code: a tag the tracker sets on a trial's run is what tune/report.py filters on and what a resume finds
its runs by; a status the driver gives a trial row is what the trial table prints and the summary counts. A typo
in one of the copies would not fail: it would find no runs, or count a trial under the wrong outcome. So each is
spelled once, here, and every module imports it. Nothing here imports Ray or MLflow (tune/search.py reads the
exit codes before Ray's auth mode is set).
"""

from __future__ import annotations

from enum import Enum

# What tune/search.py and tune/confirm.py exit with: done, every trial failed, bad input (nothing ran), interrupted.
EXIT_OK, EXIT_ALL_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# tune/search.py: its --time-budget ended before any trial finished an epoch (nothing failed; nothing to select)
EXIT_BUDGET_TOO_SHORT = 3

# Tune's statuses of a trial that will not run again (its others, RUNNING and PENDING, are of trials that will).
TUNE_ENDED = ("TERMINATED", "ERROR")


class TrialStatus(str, Enum):
    """How a trial ended, in the search's words: Tune's TERMINATED told apart (tune/progress.py's `shown_status`,
    tune/results.py's `trial_rows`). The trial table prints the value, trials.csv and the counts use it.

    A str: a member equals its value, and prints and serialises as it ("NOT_RUN", not "TrialStatus.NOT_RUN").
    Versions before this enum wrote "NOT RUN" in a trials.csv row: `TrialStatus("NOT RUN")` reads it."""

    FINISHED = "FINISHED"  # trained to its last epoch: it sent its final result
    STOPPED_EARLY = "STOPPED_EARLY"  # the scheduler (ASHA) stopped it; a result, not a failure
    STOPPED_BY_BUDGET = "STOPPED_BY_BUDGET"  # the search's --time-budget was spent while it ran (tune/budget.py)
    NOT_RUN = "NOT_RUN"  # ended before its first result (e.g. still PENDING when the search ended)
    ERROR = "ERROR"  # it raised (Tune's own word)

    __str__ = str.__str__  # the value, as enum.StrEnum (Python 3.11+) prints it
    __format__ = str.__format__

    @classmethod
    def _missing_(cls, value: object) -> "TrialStatus | None":
        return cls.NOT_RUN if value == "NOT RUN" else None


# ------------------------------------------------------------------------------------- MLflow: every run of a search

SEARCH_TAG = "dpgdiff.search"  # the search's name, on its parent, its trials' runs and its registered model versions
ROLE_TAG = "dpgdiff.role"  # what a run is: one of the ROLE_* values below
ROLE_SEARCH = "search"  # the parent run, one per search
ROLE_TRIAL = "trial"  # a child run, one per Tune trial
ROLE_CONFIRMATION = "confirmation"  # a child run of tune/confirm.py: the best configuration rerun with one seed
ROLE_LOST = "lost"  # a child run whose trial Tune's restored state does not hold (tune/tracking.py)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a child run under its parent in the UI
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the run description shown in the UI
ERROR_TAG = "error"  # the error text of a failed trial, or of a search that stopped on an exception

# ------------------------------------------------------------------------------------- the parent run

DATASET_TAG = "dataset"  # the dataset's name
FINGERPRINT_TAG = "dataset.fingerprint"  # the dataset's fingerprint (also on registered model versions)
SPLIT_TAG = "dataset.split"  # on registered model versions
GIT_COMMIT_TAG = "git_commit"  # HEAD of the checkout, "+dirty" when it had changes
SOURCE_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own (the UI links it): the commit without "+dirty"
SEED_TAG = "seed"  # the sampler seed
INPUTS_LOGGED_TAG = "dpgdiff.inputs_logged"  # "1" once its params and input artifacts are all logged
SEARCH_DONE_TAG = "dpgdiff.search_done"  # "1" once every step of the search's end is done (a resume: nothing to do)
UNFINISHED_TAG = "dpgdiff.unfinished"  # "1" while trials are left to run (cleared when the search completes)
BEST_TRIAL_TAG = "best_trial_id"  # the Tune trial id of the trial the search selected
BEST_RUN_TAG = "best_run_id"  # that trial's run

# ------------------------------------------------------------------------------------- a trial's run

TRIAL_TAG = "dpgdiff.trial_id"  # its Tune trial id: how a resumed search finds the run again
MODEL_TAG = "model.name"  # the model it trains (what tune/report.py groups Table 1 by)
LABEL_TAG = "dpgdiff.label"  # what tables call its configuration (`Config.label()`: "DPG-Diff (−DE)", "SASRec")
SAMPLED_TAG = "dpgdiff.sampled"  # its sampled parameters as sorted JSON (a configuration's identity)
OPTUNA_TAG = "dpgdiff.optuna_trial"  # its Optuna trial number (Optuna's plots number trials so)
WARM_START_TAG = "dpgdiff.warm_start"  # the earlier search whose configuration it runs; also that Optuna user attribute
BEST_EPOCH_TAG = "best_epoch"  # the epoch its selection metrics are from
STOPPED_EARLY_TAG = "dpgdiff.stopped_early"  # "1" when ASHA stopped it (the run is FINISHED)
# What stopped a FINISHED run before its last epoch (also the Optuna user attribute of its study trial): one of
STOPPED_BY_TAG = "dpgdiff.stopped_by"
STOPPED_BY_SCHEDULER = "scheduler"  # ASHA
STOPPED_BY_TIME_BUDGET = "time_budget"  # the search's --time-budget
INTERRUPTED_TAG = "dpgdiff.interrupted"  # "1" when the search stopped (Ctrl-C) before the trial ended (KILLED)
RETRIES_TAG = "dpgdiff.retries"  # how often Tune restarted the trial from its checkpoint (--max-failures)
PARETO_TAG = "dpgdiff.pareto"  # "1" on the Pareto front of a multi-objective search
SELECTED_TAG = "dpgdiff.selected"  # "1" on the search's pick: the one trial it tests
LOST_TAG = "dpgdiff.lost"  # why Tune lost the trial (ROLE_LOST); also the Optuna user attribute of its study trial
REPLACED_BY_TAG = "dpgdiff.replaced_by"  # on a lost trial's run: the run of the trial that ran its configuration

# ------------------------------------------------------------------------------------- a confirmation run

VARIANT_TAG = "dpgdiff.variant"  # "best", or the ablation / variant label
CONFIRMATION_SEED_TAG = "dpgdiff.seed"  # the seed it reran with
CONFIRMS_TAG = "dpgdiff.confirms_run"  # the run of the trial whose configuration it reruns
CONFIRMATION_TAG = "dpgdiff.confirmation"  # the confirmation (Tune experiment) that ran it

# ------------------------------------------------------------------------------------- the experiment and the model

# MLflow 3's UI records the experiment's type in this tag (its "Experiment type" setting): model training, not GenAI.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# On a registered model version (tune/serving.py): the score it was selected by and how it was measured.
METRIC_TAG, VALUE_TAG = "dpgdiff.metric", "dpgdiff.metric_value"
PROTOCOL_TAG, STANDARD_TAG = "dpgdiff.eval_protocol", "dpgdiff.standard_protocol"
SOURCE_RUN_TAG = "source_run_id"  # the parent run it was logged in

UNTIL_BUDGET = -1  # num_samples of a search with --time-budget and no --num-samples: trials start until it is spent
