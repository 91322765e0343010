"""Report a search from MLflow: the best trials, and a per-domain model comparison laid out like the paper's Table 1.

    python tune/report.py                       # the latest search in ./mlruns
    python tune/report.py --name NAME [--name OTHER ...] --out table1.md
    dpgdiff-report ...                          # the same, as the installed console script

Reads only MLflow (the parent run of each named search and its child runs). The comparison
takes, per `model.name` tag (dpgdiff, sasrec, diffurec, ...), the finished child run with test
metrics (a search tests only the trial it selects on validation MRR_X + MRR_Y, spec §5.4; across
several searches of one model, the one with the best validation value), and prints its test
metrics ×100 per domain (rows Data × Metric, one column per model, "Imp." = DPG-Diff over the
best other model), with a footnote per column naming the run id, search and trial that each cell
comes from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from dpgdiff.files import atomic_write_text
from tune import tracking
from tune.results import METRIC

# Table 1 rows: (label, metric key); MRR is untruncated (spec §5, A2), ×100 like the paper.
TABLE_METRICS = (("MRR", "mrr"), ("N@5", "ndcg5"), ("N@10", "ndcg10"), ("H@5", "hr5"), ("H@10", "hr10"))
DOMAIN_NAMES = {"food_kitchen": ("Food", "Kitchen"), "movie_book": ("Movie", "Book")}
MODEL_ORDER = ("sasrec", "diffurec", "dpgdiff")  # Table 1 puts the proposed model last
MODEL_LABELS = {"sasrec": "SASRec", "diffurec": "DiffuRec", "dpgdiff": "DPG-Diff"}
OURS = "dpgdiff"


class ReportError(RuntimeError):
    """Nothing to report (unknown search name, empty store)."""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tune/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", action="append", default=[],
                   help="search name (repeatable: e.g. one search per model); default: the latest search")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite ./mlruns/mlflow.db")
    p.add_argument("--experiment", default="dpgdiff")
    p.add_argument("--top", type=int, default=5, help="best trials to list per search (default 5)")
    p.add_argument("--out", default=None, help="Markdown file for the comparison (default: mlruns/reports/<name>-table1.md)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    import os

    args = parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.local_tracking_uri("mlruns")
    try:
        text, out = build_report(uri, args.experiment, args.name, args.top, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"\nwritten to {out}")
    return 0


def build_report(uri: str, experiment: str, names: list[str], top: int, out: Optional[str]) -> tuple[str, Path]:
    client = tracking.client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"{uri}: no MLflow experiment {experiment!r} (run tune/search.py first)")
    parents = _parents(client, exp.experiment_id, names)
    sections, children_all = [], []
    for parent in parents:
        children = tracking.child_runs(client, exp.experiment_id, parent.info.run_id)
        children_all += [(parent, c) for c in children]
        sections.append(_best_trials_section(parent, children, top))
    table = comparison_table(children_all)
    text = "\n\n".join(sections + [table])
    label = "+".join(p.data.tags.get(tracking.SEARCH_TAG, p.info.run_id) for p in parents)
    path = Path(out) if out else Path("mlruns") / "reports" / f"{label}-table1.md"
    atomic_write_text(path, table + "\n")
    return text, path


def _parents(client: Any, experiment_id: str, names: list[str]) -> list[Any]:
    if not names:
        runs = tracking.find_runs(client, experiment_id, {tracking.ROLE_TAG: "search"})
        if not runs:
            raise ReportError("no searches in this MLflow store")
        return [max(runs, key=lambda r: r.info.start_time)]
    parents = []
    for name in names:
        runs = tracking.find_runs(client, experiment_id, {tracking.SEARCH_TAG: name, tracking.ROLE_TAG: "search"})
        if not runs:
            known = sorted({r.data.tags.get(tracking.SEARCH_TAG) for r in
                            tracking.find_runs(client, experiment_id, {tracking.ROLE_TAG: "search"})} - {None})
            raise ReportError(f"no search named {name!r}; known: {', '.join(known) or 'none'}")
        parents.append(runs[0])
    return parents


def _best_val(run: Any) -> float:
    return run.data.metrics.get(f"best_{METRIC}", float("-inf"))


def _best_trials_section(parent: Any, children: list[Any], top: int) -> str:
    name = parent.data.tags.get(tracking.SEARCH_TAG, parent.info.run_id)
    counts: dict[str, int] = {}
    for c in children:
        counts[_status(c)] = counts.get(_status(c), 0) + 1
    lines = [f"## Search {name} (dataset {parent.data.tags.get('dataset', '?')}, parent run {parent.info.run_id}, "
             f"{parent.info.status})",
             "", "trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials", "",
             "| # | model | trial | status | best epoch | val MRR sum | test MRR sum | sampled | run id |",
             "|---:|---|---|---|---:|---:|---:|---|---|"]  # test: only the trial the search selected and tested
    ranked = sorted(children, key=_best_val, reverse=True)[:top]
    for i, c in enumerate(ranked, 1):
        sampled = json.loads(c.data.tags.get("dpgdiff.sampled", "{}") or "{}")
        short = ", ".join(f"{k.split('.', 1)[-1]}={_fmt(v)}" for k, v in sampled.items())
        test = c.data.metrics.get("test_mrr_sum")
        lines.append(f"| {i} | {c.data.tags.get(tracking.MODEL_TAG, '?')} | {_trial_label(c)} | "
                     f"{_status(c)} | {c.data.tags.get('best_epoch', '')} | {_num(_best_val(c))} | {_num(test)} | "
                     f"{short} | {c.info.run_id} |")
    return "\n".join(lines)


def _status(run: Any) -> str:
    """The run's MLflow status, as the UI shows it, with "(stopped early)" for a trial ASHA stopped."""
    early = run.data.tags.get(tracking.STOPPED_EARLY_TAG) == "1"
    return f"{run.info.status} (stopped early)" if early else run.info.status


def _trial_label(run: Any) -> str:
    """Optuna trial number (as in Optuna's plots) and Tune trial id."""
    number = run.data.tags.get(tracking.OPTUNA_TAG)
    tid = run.data.tags.get(tracking.TRIAL_TAG)
    return f"{number} ({tid})" if number is not None else str(tid)


def comparison_table(pairs: list[tuple[Any, Any]]) -> str:
    """Table 1 layout: rows Data × Metric, one column per model (its best finished run), then Imp."""
    best: dict[str, tuple[Any, Any]] = {}
    for parent, run in pairs:
        if run.info.status != "FINISHED" or "test_mrr_sum" not in run.data.metrics:
            continue
        model = run.data.tags.get(tracking.MODEL_TAG) or "?"
        if model not in best or _best_val(run) > _best_val(best[model][1]):
            best[model] = (parent, run)
    if not best:
        return "## Model comparison\n\nno finished trial with test metrics yet"
    models = [m for m in MODEL_ORDER if m in best] + sorted(m for m in best if m not in MODEL_ORDER)
    datasets = {p.data.tags.get("dataset", "") for p, _ in best.values()}
    dataset = datasets.pop() if len(datasets) == 1 else ""
    domains = DOMAIN_NAMES.get(dataset, ("X", "Y"))
    ours = OURS in best and len(best) > 1
    header = ["Data", "Metric"] + [f"{MODEL_LABELS.get(m, m)} [{i}]" for i, m in enumerate(models, 1)]
    header += ["Imp."] if ours else []
    lines = [f"## Model comparison ({dataset or 'mixed datasets'}; test, sampled metrics ×100, "
             "best validation MRR_X + MRR_Y per model)", "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for d, dname in zip(("x", "y"), domains):
        for j, (label, key) in enumerate(TABLE_METRICS):
            values = {m: best[m][1].data.metrics.get(f"test_{d}_{key}") for m in models}
            top = max((v for v in values.values() if v is not None), default=None)
            cells = [(f"**{100 * v:.2f}**" if v == top and len(models) > 1 else f"{100 * v:.2f}") if v is not None
                     else "-" for v in values.values()]
            row = [dname if j == 0 else "", label] + cells
            if ours:
                others = [v for m, v in values.items() if m != OURS and v is not None]
                mine = values.get(OURS)
                imp = (f"{100 * (mine - max(others)) / max(others):.1f}%" if mine is not None and others
                       and max(others) > 0 else "-")
                row.append(imp)
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for i, m in enumerate(models, 1):
        parent, run = best[m]
        lines.append(f"[{i}] {MODEL_LABELS.get(m, m)}: run {run.info.run_id} (search "
                     f"{parent.data.tags.get(tracking.SEARCH_TAG)}, trial {run.data.tags.get(tracking.TRIAL_TAG)}, "
                     f"best epoch {run.data.tags.get('best_epoch', '?')}, val MRR sum {_num(_best_val(run))})")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "-" if v is None or v == float("-inf") else f"{v:.4f}"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
