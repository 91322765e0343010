"""RESULTS.md: where the model stands, on one page, written from the MLflow store by one `tune/report.py` command.

    python tune/report.py --results RESULTS.md --name fk-sasrec --name fk-dpgdiff --name fk-control \
        [--proxy-name proxy-sasrec --proxy-name proxy-dpgdiff ...]

The page: the command that wrote it; a verdict of at most five lines, each computed from the tables below it
(never typed in); Table 1 per dataset (every confirmed model, full ranking first, sampled 1 + 999 beside it, the
run-level paired test with Holm's adjustment); Table 3 (the ablations of the DPG-Diff search and the searched
−Diffusion control against the full model); RQ4 (test N@10 against the number of reverse steps K); the budget
of every column (search trials, epochs, scheduler, patience, time budget, warm start, seed; confirmation seeds),
with the columns whose budgets differ named. Every cell's footnote names its MLflow runs.
A search whose best configuration is DPG-Diff without the diffusion (`model.diffusion: false`, labelled
"−Diffusion") is a control: it goes to Table 3, not Table 1.
"""

from __future__ import annotations

import datetime
import statistics
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from dpgdiff.significance import DEFAULT_TEST_NOTE, holm
from tune import tracking
from tune.confirmed_tables import DOMAIN_NAMES, OURS, ablation_table, confirmed_table1, format_p, paired
from tune.names import DATASET_TAG, SEARCH_TAG
from tune.report_runs import Confirmed, RankCache, confirmed_groups, open_experiment, search_parents

# The verdict's cell: full-ranking NDCG@10 (issue 38: the full ranking leads).
HEADLINE = ("N@10 full", "full_ndcg10")
ALPHA = 0.05
BUDGET_KEYS = (("trials", "num_samples"), ("epochs", "epochs"), ("scheduler", "scheduler"),
               ("grace", "grace_period"), ("patience", "train.patience"), ("time budget", "time_budget_s"),
               ("warm start", "warm_start"), ("seed", "seed"))


@dataclass
class Column:
    """One confirmed configuration of one search, with the search's budget."""

    group: Confirmed
    budget: dict[str, str]

    @property
    def is_control(self) -> bool:
        return self.group.model == OURS and "−Diffusion" in self.group.label


def search_budget(client: Any, experiment_id: str, parent: Any) -> dict[str, str]:
    """What a search spent: its parameters (`tune/parent_run.py` logs them) and how many trials it started."""
    params = parent.data.params
    budget = {label: params.get(key, "none" if key in ("time_budget_s", "warm_start") else "?")
              for label, key in BUDGET_KEYS}
    trials = tracking.child_runs(client, experiment_id, parent.info.run_id)
    budget["started"] = str(len(trials))
    budget["space"] = params.get("space_source", "?").rsplit("/", 1)[-1]
    return budget


def _columns(client: Any, experiment_id: str, parents: list[Any]) -> list[Column]:
    from tune.confirmation import BEST

    by_search = {p.data.tags.get(SEARCH_TAG, p.info.run_id): p for p in parents}
    columns = []
    for group in confirmed_groups(client, experiment_id, parents):
        if group.variant != BEST:
            continue
        columns.append(Column(group, search_budget(client, experiment_id, by_search[group.search])))
    return columns


def _budget_table(columns: Sequence[Column]) -> tuple[str, list[str]]:
    """The budgets as a table, and the names of the columns whose search budget differs from the first's."""
    shown = [label for label, _ in BUDGET_KEYS] + ["started"]
    lines = ["| column | search | space | " + " | ".join(shown) + " | confirmation seeds |",
             "|---|---|---|" + "---:|" * (len(shown) + 1)]
    for c in columns:
        lines.append(f"| {c.group.label} | {c.group.search} | {c.budget['space']} | "
                     + " | ".join(c.budget[k] for k in shown) + f" | {len(c.group.runs)} |")
    reference = {k: columns[0].budget[k] for k in shown} if columns else {}
    unequal = [c.group.label for c in columns if {k: c.budget[k] for k in shown} != reference
               or len(c.group.runs) != len(columns[0].group.runs)]
    return "\n".join(lines), unequal


def _rq4_table(columns: Sequence[Column], domains: tuple[str, str]) -> tuple[str, dict[str, bool]]:
    """Test N@10 (sampled and full) against K from the confirmation runs' test_k{K}_* metrics (`steps_curve`),
    and per column whether N@10 is non-decreasing from the smallest K to the largest."""
    from dpgdiff.training.loop import STEPS_CURVE

    lines, monotone = [], {}
    for c in columns:
        runs = list(c.group.runs.values())
        steps = [k for k in STEPS_CURVE if any(f"test_k{k}_y_ndcg10" in r.data.metrics for r in runs)]
        if not steps:
            continue
        if not lines:
            lines = ["| column | domain | metric | " + " | ".join(f"K = {k}" for k in STEPS_CURVE) + " |",
                     "|---|---|---|" + "---:|" * len(STEPS_CURVE)]
        ok = True
        for d, dname in zip(("x", "y"), domains):
            for label, metric in (("N@10 full", "full_ndcg10"), ("N@10", "ndcg10")):
                means = []
                cells = []
                for k in STEPS_CURVE:
                    v = [r.data.metrics[f"test_k{k}_{d}_{metric}"] for r in runs
                         if f"test_k{k}_{d}_{metric}" in r.data.metrics]
                    if v:
                        means.append(statistics.fmean(v))
                        std = statistics.stdev(v) if len(v) > 1 else 0.0
                        cells.append(f"{100 * means[-1]:.2f} ± {100 * std:.2f}")
                    else:
                        cells.append("-")
                if not means:  # runs evaluated without full ranking
                    continue
                ok &= all(b >= a for a, b in zip(means, means[1:]))
                lines.append(f"| {c.group.label} | {dname} | {label} | " + " | ".join(cells) + " |")
        monotone[c.group.label] = ok
    return "\n".join(lines), monotone


def _headline(ours: Confirmed, rival: Confirmed, domains: tuple[str, str],
              ranks: RankCache) -> list[tuple[str, Any, float]]:
    """(domain name, test, Holm-adjusted p) of ours against rival on the headline metric, both domains."""
    tests = [paired(ours, rival, d, HEADLINE[1], ranks) for d in ("x", "y")]
    return [(name, t, p) for name, t, p in zip(domains, tests, holm([t.p_value for t in tests]))]


def _say(ours: str, rival: str, rows: list[tuple[str, Any, float]]) -> str:
    parts = []
    for name, t, p in rows:
        if p != p:
            verdict = "untested (fewer than 2 paired runs)"
        elif p < ALPHA:
            verdict = "ahead" if t.diff > 0 else "behind"
        else:
            verdict = "level"
        parts.append(f"{name} {verdict} ({100 * t.diff:+.2f} ×100, p Holm = {format_p(p)})")
    return f"{ours} against {rival}, full-ranking N@10: " + "; ".join(parts) + "."


def _dataset_section(title: str, client: Any, experiment_id: str, parents: list[Any],
                     ranks: RankCache) -> tuple[list[str], list[str]]:
    """(verdict lines, page lines) of one dataset's searches."""
    columns = _columns(client, experiment_id, parents)
    if not columns:
        return [f"{title}: no confirmed configuration yet."], [f"## {title}", "", "No confirmation runs yet."]
    dataset = parents[0].data.tags.get(DATASET_TAG, "")
    domains = DOMAIN_NAMES.get(dataset, ("X", "Y"))
    models = [c for c in columns if not c.is_control]
    controls = [c for c in columns if c.is_control]
    page = [f"## {title}", "", "### Table 1", "",
            confirmed_table1([c.group for c in models], parents, ranks, heading=False)]
    verdict = []
    ours = next((c.group for c in models if c.group.model == OURS), None)
    others = [c.group for c in models if c.group is not ours]
    if ours and others:
        rival = max(others, key=lambda g: g.mean("x", HEADLINE[1]) + g.mean("y", HEADLINE[1]))
        strongest = f"the strongest baseline ({rival.label})" if len(others) > 1 else rival.label
        verdict.append(f"{title}: " + _say(ours.label, strongest, _headline(ours, rival, domains, ranks)))
    ablations = [g for g in confirmed_groups(client, experiment_id, parents)
                 if ours is not None and g.search == ours.search]
    if ours and (len(ablations) > 1 or controls):
        page += ["", "### Table 3: ablations and the searched −Diffusion control", "",
                 ablation_table(ablations, ranks, [c.group for c in controls], heading=False)]
    for control in controls:
        verdict.append(f"{title}: " + _say(ours.label, f"its −Diffusion control searched alike ({control.group.search})",
                                           _headline(ours, control.group, domains, ranks)))
    rq4, monotone = _rq4_table(columns, domains)
    if rq4:
        page += ["", "### RQ4: test N@10 against the reverse steps K (×100, mean ± std over seeds)", "", rq4]
        bad = [label for label, ok in monotone.items() if not ok]
        verdict.append(f"{title}: N@10 non-decreasing from K = 1 to K = 8: "
                       + ("yes, for every diffusion column." if not bad else f"no ({', '.join(bad)})."))
    budget, unequal = _budget_table(columns)
    page += ["", "### Budget of every column", "", budget, "",
             "Every column above has the same budget." if not unequal else
             f"**Budgets differ** from the first column's for: {', '.join(unequal)}; their comparison is not "
             "at equal budget."]
    if unequal:
        verdict.append(f"{title}: budgets differ for {', '.join(unequal)}.")
    return verdict, page


def build_results_page(uri: str, experiment: str, names: Sequence[str], proxy_names: Sequence[str],
                       command: str, commit: Optional[str], preface: Optional[str] = None) -> str:
    """The page: title, `preface` (hand-written Markdown, e.g. a lever's verdict) if any, the command that wrote
    it, the verdict, then each dataset's section."""
    import tempfile
    from pathlib import Path

    client, exp = open_experiment(uri, experiment)
    verdict, body = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ranks = RankCache(client, Path(tmp))
        for title, group in (("Food-Kitchen", names), ("Sparse proxy", proxy_names)):
            if not group:
                verdict.append(f"{title}: not run under this protocol yet.")
                continue
            parents = search_parents(client, exp.experiment_id, list(group))
            dataset = parents[0].data.tags.get(DATASET_TAG, "")
            title = title if title != "Food-Kitchen" else dataset.replace("_", "-").title() or title
            lines, page = _dataset_section(title, client, exp.experiment_id, parents, ranks)
            verdict += lines
            body += page + [""]
    today = datetime.date.today().isoformat()
    head = ["# Results: where DPG-Diff stands", "", *([preface, ""] if preface else []),
            f"Written {today} from the MLflow store `{uri}` (git {commit or 'unknown'}) by:", "",
            "```bash", command, "```", "",
            "Do not edit by hand: rerun the command. How each figure was reached, with the searches' commands, "
            "is in the dated journal, [BENCHMARKS.md](BENCHMARKS.md).", "",
            "## Verdict", "", *(f"{i}. {line}" for i, line in enumerate(verdict[:5], 1)), "",
            f"Tests: {DEFAULT_TEST_NOTE}; Holm-adjusted over the cells of each table (the verdict: over the two "
            "domains). Every configuration was chosen on validation; every figure is a test figure.", ""]
    return "\n".join(head + body).rstrip() + "\n"
