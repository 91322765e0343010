"""A finished (or interrupted) search's results: trial rows, tables, the best trial, parent-run artifacts.

`trial_rows` reads Tune's ResultGrid (public API): one dict per trial with its best validation epoch
from the trial's history, its Optuna trial number, its final report's `infer_ms` (and test metrics
when the trial computed them) and a status (`TrialStatus`: FINISHED, STOPPED_EARLY by ASHA, ERROR, NOT_RUN). The rest
turns rows into what a person reads: the per-domain table (`domain_table`), Markdown tables
(`markdown_table`, also used by tune/report.py), the Pareto front of a multi-objective search
(`pareto_front`), and the artifacts attached to the MLflow parent run (trials.csv/.md, best/ with
config, metrics and checkpoint, Optuna plots). The tables name statuses as the MLflow UI shows the
runs: a trial ASHA stopped is FINISHED with `stopped_early` = 1 (tag `dpgdiff.stopped_early`).
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from dpgdiff.files import atomic_write_text
from tune.names import STOPPED_BY_TIME_BUDGET, TrialStatus
from tune.space import SearchSpace

METRIC, MODE = "val_mrr_sum", "max"  # what the search maximises: validation MRR_X + MRR_Y (spec §5.4)
# What --objectives may name, with Optuna's direction: accuracy, and the inference cost `infer_ms` (ms per
# 1,000 validation cases at the trial's validation sampler and K; dpgdiff/training/loop.py).
OBJECTIVES = {METRIC: "max", "infer_ms": "min"}
# Optuna's fANOVA importances fit a random forest to the trials: on a handful of trials they are noise that
# reads as a finding (and importing scikit-learn for them takes seconds).
MIN_TRIALS_FOR_IMPORTANCES = 10
# Status of a row -> (run status shown by MLflow, stopped early?); a NOT_RUN row keeps its own word
_SHOWN_STATUS = {TrialStatus.FINISHED: ("FINISHED", 0), TrialStatus.STOPPED_EARLY: ("FINISHED", 1),
                 TrialStatus.ERROR: ("FAILED", 0),
                 TrialStatus.STOPPED_BY_BUDGET: ("FINISHED", 0)}  # --time-budget stopped it (tagged so)
DOMAIN_METRICS = ("mrr", "mrr10", "ndcg5", "ndcg10", "hr1", "hr5", "hr10")


def trial_rows(results: Any) -> list[dict[str, Any]]:
    """One summary dict per trial, the best epoch read from its history (not the last result)."""
    from tune.trainable import OPTUNA_TRIAL_KEY, WARM_START_KEY, sampled_params

    rows = []
    for r in results:
        df = r.metrics_dataframe
        metrics = r.metrics or {}
        trial_id = metrics.get("trial_id") or Path(r.path).name.replace("trial_", "")
        row: dict[str, Any] = {"trial_id": trial_id, "config": sampled_params(dict(r.config or {})),
                               "optuna_trial": (r.config or {}).get(OPTUNA_TRIAL_KEY), "path": r.path, "result": r,
                               "warm_start": (r.config or {}).get(WARM_START_KEY)}
        epochs = df[df["final"] != 1] if df is not None and "final" in df.columns else df
        if epochs is not None and len(epochs) and METRIC in epochs.columns:
            best = epochs.loc[epochs[METRIC].idxmax()]
            row["best_val"] = {k: float(v) for k, v in best.items() if str(k).startswith("val_")}
            row["best_epoch"] = int(best.get("epoch", best.get("training_iteration", 0)))
            row["epochs_run"] = int(epochs["epoch"].max()) if "epoch" in epochs.columns else len(epochs)
            row[METRIC] = float(best[METRIC])
        final = df[df["final"] == 1] if df is not None and "final" in df.columns else None
        if final is not None and len(final):
            last = final.iloc[-1]
            test = {k: float(v) for k, v in last.items() if str(k).startswith("test_") and v == v}
            if test:  # a search's trials are not tested: only the trial it selects (tune/finish.py)
                row["test"] = test
            if "infer_ms" in last and last["infer_ms"] == last["infer_ms"]:
                row["infer_ms"] = float(last["infer_ms"])
            row["best_epoch"] = int(last.get("best_epoch", row.get("best_epoch", 0)))
            row["status"] = TrialStatus.FINISHED
        elif r.error:
            row["status"] = TrialStatus.ERROR
        else:
            row["status"] = TrialStatus.STOPPED_EARLY if row.get("epochs_run") else TrialStatus.NOT_RUN
        if r.error:
            row["error"] = str(r.error)
        rows.append(row)
    return rows


def domain_table(best_val: dict[str, float], test: dict[str, float]) -> str:
    """Markdown table: metric rows, validation / test x domain X / Y columns."""
    lines = ["| metric | val X | val Y | test X | test Y |", "|---|---:|---:|---:|---:|"]
    names = list(DOMAIN_METRICS) + [f"full_{m}" for m in DOMAIN_METRICS]
    for m in names:
        cells = [best_val.get(f"val_x_{m}"), best_val.get(f"val_y_{m}"), test.get(f"test_x_{m}"), test.get(f"test_y_{m}")]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {m} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    lines.append(f"| mrr_sum | {best_val.get('val_mrr_sum', float('nan')):.4f} | | "
                 f"{test.get('test_mrr_sum', float('nan')):.4f} | |")
    return "\n".join(lines)


def print_best(best: dict[str, Any], space: SearchSpace) -> None:
    print(f"\nBest trial {best['trial_id']} (best epoch {best.get('best_epoch', '?')}, "
          f"{METRIC} {best.get(METRIC, float('nan')):.4f}); MLflow run {best.get('run_id')}")
    print("sampled:")
    for k, v in best["config"].items():
        print(f"  {k} = {v!r}")
    if space.fixed:
        print("fixed: " + ", ".join(f"{k}={v!r}" for k, v in space.fixed.items()))
    if "test" not in best:
        print("(no test metrics: the best trial's checkpoint could not be tested)")
    print("\n" + domain_table(best.get("best_val", {}), best.get("test", {})), flush=True)


def write_parent_artifacts(out: Path, rows: list[dict[str, Any]], best: dict[str, Any], space: SearchSpace,
                           objectives: tuple[str, ...] = (METRIC,)) -> None:
    """trials.csv/.md, best/{config.yaml, metrics.json, metrics.md, checkpoint/} and Optuna plots, under `out`."""
    import pandas as pd

    keys = sorted({k for r in rows for k in r["config"]})
    table = []
    for r in rows:
        shown, stopped = _SHOWN_STATUS.get(r["status"], (str(r["status"]), 0))
        rec = {"optuna_trial": r.get("optuna_trial"), "trial_id": r["trial_id"], "status": shown,
               "stopped_early": stopped, "run_id": r.get("run_id"),
               "epochs_run": r.get("epochs_run"), "best_epoch": r.get("best_epoch"), METRIC: r.get(METRIC)}
        if any(x["status"] == TrialStatus.STOPPED_BY_BUDGET for x in rows):  # --time-budget: which trials it stopped
            rec["stopped_by"] = STOPPED_BY_TIME_BUDGET if r["status"] == TrialStatus.STOPPED_BY_BUDGET else ""
        if any(x.get("warm_start") for x in rows):  # --warm-start: the earlier search a trial's configuration is from
            rec["warm_start"] = r.get("warm_start") or ""
        if any("infer_ms" in x for x in rows):
            rec.update(infer_ms=r.get("infer_ms"), pareto=int(bool(r.get("pareto"))))
        # test: the selected trial only (and any trial tested by an older version or a confirmation run)
        rec.update({k: r.get("test", {}).get(k) for k in ("test_mrr_sum", "test_x_mrr", "test_y_mrr")})
        rec.update({k: r["config"].get(k) for k in keys})
        rec["error"] = (r.get("error") or "").strip().splitlines()[-1][:200] if r.get("error") else ""
        table.append(rec)
    df = pd.DataFrame(table).sort_values(METRIC, ascending=False, na_position="last")
    atomic_write_text(out / "trials.csv", df.to_csv(index=False))
    atomic_write_text(out / "trials.md", markdown_table(df))
    resolved = space.resolve(best["config"], source=f"trial {best['trial_id']}")
    resolved.to_yaml(out / "best" / "config.yaml")
    atomic_write_text(out / "best" / "metrics.json", json.dumps(
        {"trial_id": best["trial_id"], "best_epoch": best.get("best_epoch"), **best.get("best_val", {}),
         **best.get("test", {})}, indent=1))
    atomic_write_text(out / "best" / "metrics.md", domain_table(best.get("best_val", {}), best.get("test", {})))
    ckpt = _best_checkpoint(best["result"])
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            shutil.copytree(folder, out / "best" / "checkpoint")
    _optuna_plots(out, rows, space, objectives)


def _best_checkpoint(result: Any) -> Any:
    """The final checkpoint (best.pt of the best epoch) if kept, else the best-scoring one."""
    pairs = list(getattr(result, "best_checkpoints", None) or [])
    finals = [c for c, m in pairs if (m or {}).get("final")]
    if finals:
        return finals[-1]
    scored = [(m.get(METRIC, float("-inf")), c) for c, m in pairs if m]
    return max(scored, key=lambda x: x[0])[1] if scored else result.checkpoint


def optuna_study(rows: list[dict[str, Any]], space: SearchSpace, objectives: tuple[str, ...] = (METRIC,)) -> Any:
    """An Optuna study rebuilt from the trial rows, in Optuna trial-number order, so that its trial numbers
    (what Optuna's plots show) are the runs' `dpgdiff.optuna_trial` tags. A trial with every objective
    is COMPLETE (an ASHA-stopped one with its best value so far); the others FAIL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(directions=["maximize" if OBJECTIVES[o] == "max" else "minimize" for o in objectives])
    ordered = sorted(rows, key=lambda r: (r.get("optuna_trial") is None, r.get("optuna_trial") or 0))
    for r in ordered:
        params = {k: v for k, v in r["config"].items() if k in space.params}
        values = [r.get(o) for o in objectives]
        complete = all(v is not None for v in values)
        state = optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space.distributions(params), values=values if complete else None,
            state=state, user_attrs={"trial_id": r["trial_id"]}))
    return study


def pareto_front(rows: list[dict[str, Any]], space: SearchSpace, objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of the finished trials on the Pareto front of `objectives` (Optuna's `best_trials`), by
    Optuna trial number. Only trials trained to the end take part (a multi-objective search runs FIFO)."""
    done = [r for r in rows if r["status"] == TrialStatus.FINISHED]
    by_id = {r["trial_id"]: r for r in done}
    study = optuna_study(done, space, objectives)
    front = [by_id[t.user_attrs["trial_id"]] for t in study.best_trials]
    return sorted(front, key=lambda r: (r.get("optuna_trial") is None, r.get("optuna_trial") or 0))


def _optuna_plots(out: Path, rows: list[dict[str, Any]], space: SearchSpace,
                  objectives: tuple[str, ...] = (METRIC,)) -> None:
    """Optimization history and parameter importances (of the first objective), and with two objectives the
    Pareto front, from a study rebuilt from the trial results (optuna.visualization.matplotlib: no plotly)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        study = optuna_study(rows, space, objectives)
        first = {}
        if len(objectives) > 1:  # Optuna's single-objective plots need the objective named
            first = {"target": lambda t: t.values[0], "target_name": objectives[0]}
        plots = [("optuna_history.png", lambda s: ovm.plot_optimization_history(s, **first))]
        scored = sum(r.get(METRIC) is not None for r in rows)
        if scored >= MIN_TRIALS_FOR_IMPORTANCES:
            plots.append(("optuna_importances.png", lambda s: ovm.plot_param_importances(s, **first)))
        else:
            print(f"note: optuna_importances.png not drawn: parameter importances need at least "
                  f"{MIN_TRIALS_FOR_IMPORTANCES} scored trials, this search has {scored}", file=sys.stderr)
        if len(objectives) > 1:
            plots.append(("optuna_pareto_front.png",
                          lambda s: ovm.plot_pareto_front(s, target_names=list(objectives))))
        for name, fn in plots:
            try:
                ax = fn(study)
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.set_size_inches(8, 5)
                fig.tight_layout()
                fig.savefig(out / name, dpi=100)
                plt.close(fig)
            except Exception as exc:  # e.g. importances need params varying across complete trials
                print(f"note: {name} not drawn: {exc}", file=sys.stderr)
    except Exception as exc:
        print(f"note: Optuna plots skipped: {exc}", file=sys.stderr)


def markdown_table(df: Any) -> str:
    """A pandas DataFrame as a Markdown table (floats to 4 significant digits, NaN/None empty)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if v is None or (isinstance(v, float) and v != v):
                cells.append("")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tune_trials(experiment_path: str) -> list[Any]:
    """Tune's Trial objects of an experiment (status, id, errors), read back from its saved state."""
    from ray import tune

    return list(tune.ExperimentAnalysis(experiment_path).trials)
