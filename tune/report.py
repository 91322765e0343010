"""Report a search from MLflow: the best trials, and a per-domain model comparison laid out like the paper's Table 1.

    python tune/report.py                       # the latest search in ./mlruns
    python tune/report.py --name NAME [--name OTHER ...] --out table1.md
    python tune/report.py --name NAME --trial NAME:15       # confirmed tables of trial 15 (tune/confirm.py --trial)
    python tune/report.py --name NAME --variant NAME=-DE    # Table 1's column for NAME: its confirmed -DE variant
    dpgdiff-report ...                          # the same, as the installed console script

Reads only MLflow (the parent run of each named search and its child runs). The comparison
takes, per `model.name` tag (dpgdiff, sasrec, diffurec, ...), the finished child run with test
metrics (a search tests only the trial it selects on validation MRR_X + MRR_Y, spec §5.4; across
several searches of one model, the one with the best validation value), and prints its test
metrics ×100 per domain (rows Data × Metric, one column per model, "Imp." = DPG-Diff over the
best other model), with a footnote per column naming the run id, search and trial that each cell
comes from.

When the searches have confirmation runs (tune/confirm.py: the best configuration rerun with N seeds),
two more tables follow: Table 1's layout with mean ± std over seeds (full ranking first, the sampled 1 + 999
beside it) and a paired significance test of DPG-Diff against the strongest other model in each cell, and
Table 3's layout (ablation variants against the full model). The test is `dpgdiff.significance`'s default: the
training run is the unit (seed i of one model paired with seed i of the other, each run's mean over the same
test cases one observation, a t-test over the seeds), with Holm's adjustment over the cells of each table.
Each column's footnote lists its runs by seed. `--results RESULTS.md` writes the one-page summary instead
(tune/results_page.py). A search's confirmed columns are those of its best
trial, or of the trial named with --trial (confirmed with tune/confirm.py --trial); its Table 1 column is that
trial's configuration itself, or the confirmed variant named with --variant (such as an ablation that was kept
as the committed configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from dpgdiff.config import MODEL_LABELS
from dpgdiff.data import DataError
from dpgdiff.files import atomic_write_text
from tune import stores, tracking
from tune.confirmed_tables import DOMAIN_NAMES, MODEL_ORDER, OURS, TABLE_METRICS, confirmation_tables
from tune.endpoints import check_tracking_uri, tracking_uri_source
from tune.errors import ReportError, SearchError
from tune.names import (
    BEST_EPOCH_TAG,
    DATASET_TAG,
    EXIT_OK,
    EXIT_USAGE,
    INTERRUPTED_TAG,
    LABEL_TAG,
    MODEL_TAG,
    OPTUNA_TAG,
    SAMPLED_TAG,
    SEARCH_TAG,
    STOPPED_EARLY_TAG,
    TRIAL_TAG,
)
from tune.report_runs import open_experiment, search_parents
from tune.results import METRIC


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tune/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", action="append", default=[],
                   help="search name (repeatable: e.g. one search per model); default: the latest search")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite ./mlruns/mlflow.db")
    p.add_argument("--experiment", default="dpgdiff")
    p.add_argument("--trial", action="append", default=[], metavar="SEARCH:TRIAL",
                   help="the confirmed tables show this trial's confirmation runs instead of the search best's "
                        "(tune/confirm.py --trial; repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="SEARCH=VARIANT",
                   help="Table 1's confirmed column for SEARCH is this confirmed variant (tune/confirm.py --variant "
                        "or --ablations, e.g. -DE) instead of the configuration itself (repeatable)")
    p.add_argument("--top", type=int, default=5, help="best trials to list per search (default 5)")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="write the one-page summary (verdict, Table 1, Table 3, RQ4, budgets) of the --name searches "
                        "to FILE, e.g. RESULTS.md, instead of the search report (tune/results_page.py)")
    p.add_argument("--proxy-name", action="append", default=[], metavar="NAME",
                   help="with --results: the searches on the sparse proxy (bench/sparse_pair.py), its own section")
    p.add_argument("--preface", default=None, metavar="FILE",
                   help="with --results: a Markdown file whose text opens the page, under its title (a finding the "
                        "tables cannot show, e.g. the verdict on levers run under a pre-registered protocol)")
    p.add_argument("--popularity", action="store_true",
                   help="print each --name search's selected trial beside item popularity on the same test cases "
                        "and candidates (tune/popularity.py), instead of the search report")
    p.add_argument("--data-dir", default=None, help="with --popularity: where the search's data is on this machine")
    p.add_argument("--out", default=None, help="Markdown file for the comparison (default: reports/<name>-table1.md beside the "
                        "tracking store's mlflow.db, or in the current folder for a tracking server)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    import os

    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded ranks file
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or stores.local_tracking_uri("mlruns")
    try:
        if args.top < 1:
            raise ReportError(f"--top {args.top}: must be >= 1 (the best trials listed per search)")
        check_tracking_uri(uri, tracking_uri_source(bool(args.tracking_uri)))
        if args.results:
            return _write_results(args, uri)
        if args.popularity:  # tune/popularity.py
            from tune.popularity import print_popularity

            return print_popularity(uri, args.experiment, args.name, args.data_dir)
        text, out = build_report(uri, args.experiment, args.name, args.top, args.out, args.trial, args.variant)
    except (ReportError, SearchError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(text)
    print(f"\nwritten to {out}")
    return EXIT_OK


def _write_results(args: argparse.Namespace, uri: str) -> int:
    """--results FILE: the page, named by the command that writes it (this one, as a user would type it)."""
    import shlex

    from tune.results_page import build_results_page
    from tune.settings import git_commit

    if not args.name:
        raise ReportError("--results needs the searches to summarise (--name, repeatable)")
    words = ["python tune/report.py", "--results", args.results]
    words += [w for n in args.name for w in ("--name", n)] + [w for n in args.proxy_name for w in ("--proxy-name", n)]
    preface = None
    if args.preface:
        try:
            preface = Path(args.preface).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"--preface {args.preface}: cannot read it ({type(exc).__name__}: {exc}); expected a "
                              "Markdown file") from None
        words += ["--preface", args.preface]
    if args.tracking_uri:
        words += ["--tracking-uri", args.tracking_uri]
    command = " ".join(shlex.quote(w) if i else w for i, w in enumerate(words))
    text = build_results_page(uri, args.experiment, args.name, args.proxy_name, command, git_commit(), preface)
    atomic_write_text(Path(args.results), text)
    print(text)
    print(f"written to {args.results} ({len(text.splitlines())} lines)")
    return EXIT_OK


def build_report(uri: str, experiment: str, names: list[str], top: int, out: Optional[str],
                 trials: Sequence[str] = (), variants: Sequence[str] = ()) -> tuple[str, Path]:
    """trials: 'SEARCH:TRIAL' (--trial), whose confirmation runs the confirmed tables show for that search;
    variants: 'SEARCH=VARIANT' (--variant), the confirmed variant that is that search's Table 1 column."""
    client, exp = open_experiment(uri, experiment)
    parents = search_parents(client, exp.experiment_id, names)
    sections, children_all = [], []
    for parent in parents:
        children = tracking.child_runs(client, exp.experiment_id, parent.info.run_id)
        children_all += [(parent, c) for c in children]
        sections.append(_best_trials_section(parent, children, top))
    table = comparison_table(children_all)
    confirmed = confirmation_tables(client, exp.experiment_id, parents, _confirmed_trials(client, exp, parents, trials),
                                    _table1_variants(parents, variants))
    if confirmed:
        table += "\n\n" + confirmed
    text = "\n\n".join(sections + [table])
    label = "+".join(p.data.tags.get(SEARCH_TAG, p.info.run_id) for p in parents)
    path = Path(out) if out else reports_dir(uri) / f"{label}-table1.md"
    atomic_write_text(path, table + "\n")
    return text, path


def reports_dir(tracking_uri: str) -> Path:
    """Where reports go by default: beside the store they were read from (a local SQLite store's folder, or a
    file store), so that pointing --tracking-uri at another store does not write into the current folder;
    ./reports for a tracking server."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent / "reports"
    if tracking_uri.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return Path(url2pathname(urlparse(tracking_uri).path)) / "reports"
    if "://" not in tracking_uri:  # a plain folder: MLflow's file store
        return Path(tracking_uri) / "reports"
    return Path("reports")


def _best_val(run: Any) -> float:
    return run.data.metrics.get(f"best_{METRIC}", float("-inf"))


def _best_trials_section(parent: Any, children: list[Any], top: int) -> str:
    name = parent.data.tags.get(SEARCH_TAG, parent.info.run_id)
    counts: dict[str, int] = {}
    for c in children:
        counts[_status(c)] = counts.get(_status(c), 0) + 1
    lines = [f"## Search {name} (dataset {parent.data.tags.get(DATASET_TAG, '?')}, parent run {parent.info.run_id}, "
             f"{parent.info.status})",
             "", "trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials", "",
             "| # | model | trial | status | best epoch | val MRR sum | test MRR sum | sampled | run id |",
             "|---:|---|---|---|---:|---:|---:|---|---|"]  # test: only the trial the search selected and tested
    ranked = sorted(children, key=_best_val, reverse=True)[:top]
    for i, c in enumerate(ranked, 1):
        sampled = json.loads(c.data.tags.get(SAMPLED_TAG, "{}") or "{}")
        short = ", ".join(f"{k.split('.', 1)[-1]}={_fmt(v)}" for k, v in sampled.items())
        test = c.data.metrics.get("test_mrr_sum")
        lines.append(f"| {i} | {c.data.tags.get(MODEL_TAG, '?')} | {_trial_label(c)} | "
                     f"{_status(c)} | {c.data.tags.get(BEST_EPOCH_TAG, '')} | {_num(_best_val(c))} | {_num(test)} | "
                     f"{short} | {c.info.run_id} |")
    return "\n".join(lines)


def _status(run: Any) -> str:
    """The run's MLflow status, as the UI shows it, with "(stopped early)" for a trial ASHA stopped and
    "(interrupted)" for one the search left unfinished (a resume continues it)."""
    if run.data.tags.get(STOPPED_EARLY_TAG) == "1":
        return f"{run.info.status} (stopped early)"
    if run.data.tags.get(INTERRUPTED_TAG) == "1":
        return f"{run.info.status} (interrupted)"
    return run.info.status


def _trial_label(run: Any) -> str:
    """Optuna trial number (as in Optuna's plots) and Tune trial id."""
    number = run.data.tags.get(OPTUNA_TAG)
    tid = run.data.tags.get(TRIAL_TAG)
    return f"{number} ({tid})" if number is not None else str(tid)


def comparison_table(pairs: list[tuple[Any, Any]]) -> str:
    """Table 1 layout: rows Data × Metric, one column per model (its best finished run), then Imp."""
    best: dict[str, tuple[Any, Any]] = {}
    for parent, run in pairs:
        if run.info.status != "FINISHED" or "test_mrr_sum" not in run.data.metrics:
            continue
        model = run.data.tags.get(MODEL_TAG) or "?"
        if model not in best or _best_val(run) > _best_val(best[model][1]):
            best[model] = (parent, run)
    if not best:
        return "## Model comparison\n\nno finished trial with test metrics yet"
    models = [m for m in MODEL_ORDER if m in best] + sorted(m for m in best if m not in MODEL_ORDER)
    datasets = {p.data.tags.get(DATASET_TAG, "") for p, _ in best.values()}
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
        lines.append(f"[{i}] {run.data.tags.get(LABEL_TAG) or MODEL_LABELS.get(m, m)}: run {run.info.run_id} (search "
                     f"{parent.data.tags.get(SEARCH_TAG)}, trial {run.data.tags.get(TRIAL_TAG)}, "
                     f"best epoch {run.data.tags.get(BEST_EPOCH_TAG, '?')}, val MRR sum {_num(_best_val(run))})")
    return "\n".join(lines)


def _confirmed_trials(client: Any, exp: Any, parents: list[Any], trials: Sequence[str]) -> dict[str, tuple[str, str]]:
    """--trial SEARCH:TRIAL values -> {search: (trial as given, its run id)}; the search must be reported."""
    from tune.confirmation import parse_trial, trial_run_id

    by_search = {p.data.tags.get(SEARCH_TAG): p for p in parents}
    chosen = {}
    try:
        for text in trials:
            search, trial = parse_trial(text)
            if search not in by_search:
                raise ReportError(f"--trial {text!r}: search {search!r} is not reported (add --name {search})")
            chosen[search] = (trial, trial_run_id(client, exp.experiment_id, by_search[search], trial))
    except SearchError as exc:
        raise ReportError(str(exc)) from exc
    return chosen


def _table1_variants(parents: list[Any], variants: Sequence[str]) -> dict[str, str]:
    """--variant SEARCH=VARIANT values -> {search: variant}; the search must be reported."""
    searches = {p.data.tags.get(SEARCH_TAG) for p in parents}
    chosen = {}
    for text in variants:
        search, sep, variant = (part.strip() for part in text.partition("="))
        if not sep or not search or not variant:
            raise ReportError(f"--variant {text!r}: expected SEARCH=VARIANT, e.g. --variant my-search=-DE")
        if search not in searches:
            raise ReportError(f"--variant {text!r}: search {search!r} is not reported (add --name {search})")
        chosen[search] = variant
    return chosen


def _num(v: Any) -> str:
    return "-" if v is None or v == float("-inf") else f"{v:.4f}"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    from dpgdiff.cli import exit_process

    exit_process(main())
