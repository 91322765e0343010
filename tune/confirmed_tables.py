"""Table 1 and Table 3 from confirmation runs: mean ± std over seeds, the default paired test, Holm per table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from tune.errors import ReportError
from tune.names import DATASET_TAG, LABEL_TAG
from tune.report_runs import Confirmed, RankCache, confirmed_groups

# The paper's Table 1 layout, also that of report.py's comparison of a search's trials. Rows: (label, metric key);
# MRR is untruncated (spec §5, A2), ×100 like the paper.
TABLE_METRICS = (("MRR", "mrr"), ("N@5", "ndcg5"), ("N@10", "ndcg10"), ("H@5", "hr5"), ("H@10", "hr10"))
DOMAIN_NAMES = {"food_kitchen": ("Food", "Kitchen"), "movie_book": ("Movie", "Book")}
MODEL_ORDER = ("sasrec", "diffurec", "dpgdiff")  # Table 1 puts the proposed model last
OURS = "dpgdiff"

# Rows of the confirmed Table 1: (label, metric key); "full_*" ranks against every item of the domain and leads
# (sampled negatives reward whatever ranks popular items high: Krichene & Rendle, KDD 2020).
FULL_METRICS = (("N@10 full", "full_ndcg10"), ("H@10 full", "full_hr10"), ("MRR full", "full_mrr"))
CONFIRMED_METRICS = FULL_METRICS + TABLE_METRICS
ABLATION_METRICS = (("N@10 full", "full_ndcg10"), ("N@10", "ndcg10"), ("H@10", "hr10"))


def paired(a: Confirmed, b: Confirmed, domain: str, key: str, ranks: RankCache) -> Any:
    """The default paired test of a against b on one domain's metric `key`, over the seeds both have (seed i with
    seed i); all nan where either lacks those ranks."""
    from dpgdiff.significance import PairedResult, paired_test

    seeds = sorted(set(a.runs) & set(b.runs))
    which = f"full_{domain}" if key.startswith("full_") else domain
    metric = key.removeprefix("full_")
    pairs = [(ranks(a.runs[s]).get(which), ranks(b.runs[s]).get(which)) for s in seeds]
    if not pairs or any(x is None or y is None for x, y in pairs):  # e.g. runs evaluated without full ranking
        return PairedResult.missing(metric)
    return paired_test([x for x, _ in pairs], [y for _, y in pairs], metric)


def confirmation_tables(client: Any, experiment_id: str, parents: list[Any],
                        trials: Optional[dict[str, tuple[str, str]]] = None,
                        variants: Optional[dict[str, str]] = None) -> str:
    """Table 1 (mean ± std over seeds, paired tests) and Table 3 (ablations) from confirmation runs; '' if none.
    trials: as `confirmed_groups`; variants: {search: the confirmed variant that is its Table 1 column}."""
    from tune.confirmation import BEST

    groups = confirmed_groups(client, experiment_id, parents, trials)
    variants = variants or {}
    for search, variant in variants.items():
        have = sorted(g.variant for g in groups if g.search == search)
        if variant not in have:
            raise ReportError(f"--variant {search}={variant}: search {search!r} has no confirmed variant {variant!r} "
                              f"(confirmed: {', '.join(have) or 'none'}; tune/confirm.py --ablations or --variant)")
    if not groups:
        return ""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ranks = RankCache(client, Path(tmp))
        parts = [confirmed_table1([g for g in groups if g.variant == variants.get(g.search, BEST)], parents, ranks)]
        for search in dict.fromkeys(g.search for g in groups):
            of_search = [g for g in groups if g.search == search]
            if len(of_search) > 1:
                parts.append(ablation_table(of_search, ranks))
    return "\n\n".join(p for p in parts if p)


def column_label(group: Confirmed, groups: list[Confirmed]) -> str:
    """The configuration's label ("DPG-Diff (−DE)"); a variant's is its search's configuration's and the variant's
    name, or, without that configuration in the table, its own tagged label."""
    label = group.label
    if not group.is_best:
        own = next((g for g in groups if g.search == group.search and g.is_best), None)
        tagged = next(iter(group.runs.values())).data.tags.get(LABEL_TAG)
        label = f"{own.label} {group.variant}" if own else (tagged or f"{label} {group.variant}")
    return label if sum(g.model == group.model for g in groups) == 1 else f"{label} ({group.search})"


def confirmed_table1(groups: list[Confirmed], parents: list[Any], ranks: RankCache, heading: bool = True) -> str:
    if not groups:
        return ""
    from dpgdiff.significance import DEFAULT_TEST_NOTE, holm

    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    groups = sorted(groups, key=lambda g: order.get(g.model, -1))
    ours = next((g for g in groups if g.model == OURS), None)
    others = [g for g in groups if g is not ours]
    dataset = parents[0].data.tags.get(DATASET_TAG, "")
    domains = DOMAIN_NAMES.get(dataset, ("X", "Y"))
    seeds = sorted({s for g in groups for s in g.runs})
    header = ["Data", "Metric"] + [f"{column_label(g, groups)} [{i}]" for i, g in enumerate(groups, 1)]
    if ours and others:
        header += ["vs", "Imp.", "diff ×100 [95% CI]", "p", "p Holm"]
    named = " (or at the trial named with --trial, or its variant named with --variant: see the footnotes)" \
        if any(g.trial or not g.is_best for g in groups) else ""
    rows, tests = [], []
    for d, dname in zip(("x", "y"), domains):
        for j, (label, key) in enumerate(CONFIRMED_METRICS):
            means = [g.mean(d, key) for g in groups]
            top = max(means)
            cells = [f"**{g.cell(d, key)}**" if m == top and len(groups) > 1 else g.cell(d, key)
                     for g, m in zip(groups, means)]
            rows.append([dname if j == 0 else "", label] + cells)
            if ours and others:
                rival = max(others, key=lambda g: g.mean(d, key))  # the strongest other model in this cell
                tests.append((rival, paired(ours, rival, d, key, ranks)))
    adjusted = holm([t.p_value for _, t in tests])
    for row, (rival, test), p_holm in zip(rows, tests, adjusted):
        row += [column_label(rival, groups), "-" if test.rel_diff != test.rel_diff else f"{100 * test.rel_diff:+.1f}%",
                "-" if test.diff != test.diff else
                f"{100 * test.diff:+.2f} [{100 * test.ci_low:+.2f}, {100 * test.ci_high:+.2f}]",
                format_p(test.p_value), format_p(p_holm)]
    title = (f"## Confirmed comparison ({dataset}; test metrics ×100, mean ± std over seeds {seeds}; "
             f"each model at its search's best configuration, chosen on validation{named})")
    lines = ([title, ""] if heading else []) + [
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2),
             *("| " + " | ".join(row) + " |" for row in rows), ""]
    if ours and others:
        lines.append(f"Imp.: {ours.label}'s mean over the strongest other model's (\"vs\") in that cell. diff, 95% CI, "
                     f"p: {DEFAULT_TEST_NOTE}, {ours.label} minus that model. p Holm: adjusted over the "
                     f"{len(tests)} cells of this table. \"full\": ranked against every item of the domain; the "
                     "others against 999 sampled negatives (the paper's protocol).")
        lines.append("")
    for i, g in enumerate(groups, 1):
        trial = f", trial {g.trial} (--trial; not the search's best)" if g.trial else ""
        if not g.is_best:
            trial += f", variant {g.variant} (--variant; the configuration with that variant's changes)"
        lines.append(f"[{i}] {column_label(g, groups)}: search {g.search}{trial}, confirmation runs {g.footnote()}")
    return "\n".join(lines)


def ablation_table(groups: list[Confirmed], ranks: RankCache, controls: Sequence[Confirmed] = (),
                   heading: bool = True) -> str:
    """Table 3: the variants of one search against its configuration ("full"), and `controls` (other searches'
    confirmed configurations, such as the searched −Diffusion control) against it too."""
    from dpgdiff.significance import DEFAULT_TEST_NOTE, holm
    from tune.confirmation import ABLATIONS, BEST

    order = [BEST, *ABLATIONS]
    groups = sorted(groups, key=lambda g: (order.index(g.variant) if g.variant in order else len(order), g.variant))
    full = groups[0] if groups[0].variant == BEST else None
    rows_of = [*groups, *controls]
    header = ["Variant", "seeds"] + [f"{d.upper()} {label}" for d in ("x", "y") for label, _ in ABLATION_METRICS]
    tested = full is not None and len(rows_of) > 1
    if tested:
        header += ["p X N@10 full", "p Y N@10 full"]
    trial = f", trial {groups[0].trial}" if groups[0].trial else ""
    title = f"## Ablations of search {groups[0].search}{trial} (Table 3 layout; test ×100, mean ± std over seeds)"
    lines = ([title, ""] if heading else []) + ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    tests = [paired(g, full, d, "full_ndcg10", ranks).p_value
             for g in rows_of if g is not full for d in ("x", "y")] if tested else []
    adjusted = iter(holm(tests))
    for g in rows_of:
        name = "Full (best config)" if g is full else g.variant if g in groups else f"{g.label}, searched ({g.search})"
        row = [name, str(len(g.runs))] + [g.cell(d, key) for d in ("x", "y") for _, key in ABLATION_METRICS]
        if tested:
            row += ["" if g is full else format_p(next(adjusted)) for _ in ("x", "y")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if tested:
        lines.append(f"p: {DEFAULT_TEST_NOTE}, each row against the full model on full-ranking NDCG@10 (the seeds both "
                     f"have), Holm-adjusted over the {len(tests)} tests of this table.")
    for g in rows_of:
        lines.append(f"- {g.variant if g in groups else g.label + ' (' + g.search + ')'}: {g.footnote()}")
    return "\n".join(lines)


def format_p(p: float) -> str:
    """A p-value as the tables print it: n/a (nan), 1.2e-04 below 0.001, else 0.123."""
    return "n/a" if p != p else f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"
