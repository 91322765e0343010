"""The end of a search: what its trials came to, the selected trial tested, the parent run's record, the exit code.

`finish` reconciles MLflow with Tune's saved state, counts the trials by outcome, says whether the search is
complete (else: the command to resume it), tests the selected trial (the only trial whose test metrics are
computed: trials select on validation), prints its config and per-domain validation and test metrics, attaches the
best checkpoint, summary tables and Optuna plots to the parent run, registers the model (tune/serving.py), and, with
two objectives, prints and tags the Pareto front.

The parent's summary metrics are named `search_*` (`search_best_val_mrr_sum`,
`search_best_test_x_mrr`, `search_n_trials`, ...): trial runs log `val_*` per epoch and
`best_val_mrr_sum`, and the same names on the parent would put it among the trials in overlaid charts.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from tune import budget, tracking
from tune import study as optuna_study
from tune.names import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    ERROR_TAG,
    EXIT_ALL_FAILED,
    EXIT_BUDGET_TOO_SHORT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    LOST_TAG,
    PARETO_TAG,
    SEARCH_DONE_TAG,
    SELECTED_TAG,
    STOPPED_BY_TAG,
    STOPPED_BY_TIME_BUDGET,
    STOPPED_EARLY_TAG,
    TUNE_ENDED,
    UNFINISHED_TAG,
    TrialStatus,
)
from tune.parent_run import ParentRun, ui_links
from tune.results import (
    METRIC,
    OBJECTIVES,
    _best_checkpoint,
    pareto_front,
    print_best,
    trial_rows,
    tune_trials,
    write_parent_artifacts,
)
from tune.serving import publish_best_model
from tune.settings import SearchSettings
from tune.space import SearchSpace


DONE_OUTCOMES = ("finished", "stopped early by ASHA", "failed")  # what a resume does not run again


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
    if settings.optuna_storage:  # the study agrees with Tune: no trial Tune ended stays RUNNING there
        report_study(settings, trials, rows, ended_by_budget)
    run_ids = {t.trial_id: parent.tracker.run_id(t, create=False) for t in trials}
    for row in rows:
        row["run_id"] = run_ids.get(row["trial_id"])
    done = [r for r in rows if r["status"] == TrialStatus.FINISHED]
    failed = [r for r in rows if r["status"] == TrialStatus.ERROR]
    counts = outcome_counts(rows, trials, settings.num_samples, ended_by_budget,
                            clock.stopped_ids if ended_by_budget else frozenset())
    until_budget = settings.num_samples == budget.UNTIL_BUDGET  # no count: the budget decided how many ran
    print(f"\n{len(rows) if until_budget else settings.num_samples} trial(s): "
          + ", ".join(f"{n} {what}" for what, n in counts.items() if n or what in DONE_OUTCOMES)
          + (f" (FINISHED in MLflow, tagged {STOPPED_EARLY_TAG})" if counts["stopped early by ASHA"] else "")
          + (f" ({first_epoch_note(rows, clock)}{STOPPED_BY_TAG}={STOPPED_BY_TIME_BUDGET})"
             if counts.get("stopped by the time budget") else "")
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
        if ended_by_budget and not failed:  # nothing failed: the budget was too short for a first epoch
            pace = f" (an epoch takes about {clock.epoch_s:.0f} s here)" if clock.epoch_s else ""
            text = (f"the time budget ended before any trial finished an epoch{pace}; try --time-budget "
                    f"{budget.suggested_budget(clock)}")
            client.set_tag(run_id, ERROR_TAG, text)
            client.set_terminated(run_id, status="FAILED")
            print(f"\nerror: {text}", file=sys.stderr)
            return EXIT_BUDGET_TOO_SHORT
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
          f"Browse with:\n    {ui_command(settings)}\n"
          + ui_links(parent.experiment_id, run_id, settings.name, settings.run.ui_port), flush=True)
    return EXIT_OK


def ui_command(settings: SearchSettings) -> str:
    """The `mlflow ui` command whose pages the printed links open, and how to use another port."""
    port = settings.run.ui_port
    return (f"mlflow ui --backend-store-uri {settings.tracking_uri} --host 127.0.0.1 --port {port}   "
            f"(the links below are for port {port}; another: search --ui-port PORT or DPGDIFF_UI_PORT)")


def report_study(settings: SearchSettings, trials: list[Any], rows: list[dict[str, Any]],
                 ended_by_budget: bool = False) -> None:
    """Close the study's trials that Tune lost, or ended without telling the searcher (tune/study.py; trials: Tune's
    saved state, whose configs carry the Optuna numbers even of trials without a result; rows: `trial_rows`, or []
    when the search stopped on an error: then a trial's last result gives its values; ended_by_budget: the
    --time-budget ended the search); say where it is."""
    from tune.trainable import OPTUNA_TRIAL_KEY

    numbers = {t.trial_id: int(t.config[OPTUNA_TRIAL_KEY]) for t in trials
               if (t.config or {}).get(OPTUNA_TRIAL_KEY) is not None}
    by_id = {r["trial_id"]: r for r in rows}
    values = {}  # of the trials Tune ended: val_mrr_sum at the best epoch (as selected), the other objectives last
    for t in trials:
        if t.status in TUNE_ENDED and t.trial_id in numbers:
            row = by_id.get(t.trial_id) or {}
            last = (row["result"].metrics or {}) if row.get("result") is not None else (t.last_result or {})
            values[numbers[t.trial_id]] = [row.get(o, last.get(o)) for o in settings.objectives]
    failed = [numbers[t.trial_id] for t in trials if t.status == "ERROR" and t.trial_id in numbers]
    optuna_study.close_ended_trials(settings.optuna_storage, settings.name, values, failed, by_budget=ended_by_budget)
    lost = optuna_study.close_lost_trials(settings.optuna_storage, settings.name, numbers.values())
    if lost:
        print(f"Optuna study: trial(s) {', '.join(map(str, lost))} were asked before the driver was killed and "
              f"Tune lost them: FAIL, with user attribute {LOST_TAG}", flush=True)
    url = optuna_study.shown(settings.optuna_storage)
    print(f"Optuna study {settings.name!r} in {url}; browse with:\n    optuna-dashboard {url}", flush=True)


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


def outcome_counts(rows: list[dict[str, Any]], trials: list[Any], planned: int,
                   ended_by_budget: bool = False, budget_stopped: frozenset = frozenset()) -> dict[str, int]:
    """Trials by outcome: DONE_OUTCOMES, then interrupted (Tune's saved state has it unfinished, or does not know
    it: a resume runs it) and not started. Tune's saved state decides what is done, so the summary line and the
    UNFINISHED line count alike. ended_by_budget: the --time-budget ended the search, so the trials it left
    unstarted (and those it stopped before their first result) are done too; budget_stopped: the trials it stopped
    while they ran (one stopped inside its first epoch counts as stopped, not as not started)."""
    saved = {t.trial_id: t.status for t in trials}
    counts = dict.fromkeys((*DONE_OUTCOMES, *(budget.BUDGET_OUTCOMES if ended_by_budget else ()), "interrupted",
                            "not started"), 0)
    for row in rows:
        status = saved.get(row["trial_id"])
        if status not in TUNE_ENDED:
            counts["interrupted"] += 1
        elif status == "ERROR" or row["status"] == TrialStatus.ERROR:
            counts["failed"] += 1
        elif row["status"] == TrialStatus.STOPPED_BY_BUDGET or row["trial_id"] in budget_stopped:
            counts["stopped by the time budget"] += 1
        elif row["status"] == TrialStatus.NOT_RUN and ended_by_budget:
            counts["not started (time budget)"] += 1
        else:
            counts["finished" if row["status"] == TrialStatus.FINISHED else "stopped early by ASHA"] += 1
    counts["not started (time budget)" if ended_by_budget else "not started"] += max(0, planned - len(rows))
    return counts


def first_epoch_note(rows: list[dict[str, Any]], clock: Optional[budget.BudgetClock]) -> str:
    """"N inside its first epoch; " for the trials the budget stopped before they reported an epoch (started, so
    not "not started", and without a result to select), else ""."""
    n = sum(1 for r in rows if budget.stopped_by_budget(clock, r["trial_id"]) and r.get(METRIC) is None)
    return f"{n} inside {'its' if n == 1 else 'their'} first epoch; " if n else ""


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
