"""Hyperparameter search for dpgdiff: Ray Tune + Optuna + MLflow (kept out of the dpgdiff package).

`tune/search.py` owns the search's command line (`python tune/search.py`, or `dpgdiff-search`): it
parses the flags into a `SearchSettings` and calls `run_search`.

`tune/settings.py` owns what a search is: the frozen `SearchSettings` built from the command line or
from the resume file saved beside Tune's state, and the `RunOptions` of this one invocation.

`tune/driver.py` owns running a search: `run_search(settings, train_fn=...)` loads the data, starts
or joins Ray and checks that a trial fits on a node (`tune/ray_start.py`), opens the MLflow parent run
(`tune/parent_run.py`, which also makes the `mlflow ui` links), builds or restores the Tuner
(`tune/tuner.py`: the searcher, the scheduler, the callbacks and the trial table), fits it, and ends
the search (`tune/finish.py`: the trials counted by outcome, the selected trial tested, the parent
run's artifacts, summary metrics and tags, the exit code).

`tune/progress.py` owns what the user sees while a search runs: the trial table with the elapsed time and
an estimate of the time left.

`tune/trainable.py` owns one trial inside a Ray worker: it resolves the sampled config, loads the
dataset once per process and calls the train function with a reporter that forwards to Tune.

`tune/space.py` owns search spaces: the YAML schema, its validation against `Config`, and Optuna's
define-by-run function; `tune/space_choice.py` picks the space a search uses without `--space` and
sizes a dataset-agnostic one from the dataset card.

`tune/tracking.py` owns MLflow: one parent run per search, one child run per trial found by tag, so
that a resumed search never duplicates runs.

`tune/names.py` holds the names the layer shares, each spelled once: the `TrialStatus` a trial ends with
(FINISHED, STOPPED_EARLY, STOPPED_BY_BUDGET, NOT_RUN, ERROR), every MLflow tag name and value a search writes
or reads, and the exit codes.

`tune/budget.py` owns `--time-budget`: the clock that counts the search's time across drivers (each driver
makes its own and hands it to the hooks that read it), the record of each driver's time, the stopper that
ends the trials when it is spent, what a budgeted search ends with, and what the search prints about it;
`tune/storage.py` reads and writes the small files kept beside Tune's state, locally or at a storage URI.

`tune/study.py` owns the search's Optuna study in its database (`mlruns/optuna.db` by default), which a
resume continues and `optuna-dashboard` opens; `tune/warmstart.py` owns `--warm-start`: the best
configurations of earlier searches, mapped onto the new space, enqueued as its first trials.

`tune/serving.py` owns the served model: the best trial as an MLflow pyfunc model, registered as
`dpgdiff-<dataset>` with the alias `best` moved only when a search improves on it.

`tune/results.py` owns reading results: trial rows from Tune's ResultGrid, the per-domain and Markdown
tables, and the artifacts attached to the parent run; `tune/report.py` (`dpgdiff-report`) prints a
search's best trials and the Table 1 comparison from MLflow, and, once confirmation runs exist, mean ±
std over seeds with paired significance tests and the Table 3 ablations; `tune/report_runs.py` finds
the runs a report reads (the named searches, their confirmation runs by variant, their per-case test
ranks) and `tune/confirmed_tables.py` lays out those confirmed tables; `tune/results_page.py` writes
RESULTS.md from the same tables (`tune/report.py --results`): a verdict computed from them, the searched
control, RQ4 and every column's budget; `tune/popularity.py` sets a search's selected trial beside item
popularity on the same test cases and candidates (`tune/report.py --popularity`).

`tune/confirm.py` (`dpgdiff-confirm`) owns the confirmation command line, and `tune/confirmation.py` runs
it: the best configuration of finished searches rerun with N seeds (and ablation variants) as Ray trials,
tracked as confirmation children of each search's parent run with their per-case test ranks.

`tune/ray_internals.py` is the one place that uses Ray names outside its public API (the local temp
dir, the local-only mode that keeps a local Ray on 127.0.0.1, the flag that makes Tune save its
state when a trial is added, the stopper a resumed Tuner keeps, and the logger of Ray's token-auth
notice), checked so that a Ray upgrade that drops them fails loudly.

`tune/leftovers.py` owns what a killed driver leaves behind: it marks each local Ray temp folder with
the driver's PID, and the next search stops that Ray's processes by PID and removes the folder.
"""
