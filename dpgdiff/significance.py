"""Paired significance of one model against another: training runs are the unit, test cases the measurement.

The paper claims p < 0.05 without naming a test. Here it is named and calibrated. Both models rank the same cases
against the same saved candidates (the shared evaluator), with seed i of A paired with seed i of B. A model's
result varies with its training run (initialisation, data order, dropout) as much as with the test cases, so the
default test takes each run's mean over the cases as one observation: a paired t-test over the n seeds (n − 1
degrees of freedom), as Dietterich (1998) and Bouthillier et al. ("Accounting for Variance in Machine Learning
Benchmarks", MLSys 2021) recommend. Pooling every (seed, case) pair instead, as this module did before issue 38,
treats the cases of one run as independent evidence about the method: on simulated identical methods with a
realistic seed spread it declared a difference in about 37% of comparisons at α = 0.05
(`bench/significance_calibration.py`). That test is kept as method="cases" ("test-set variance only": how sure
we are about these particular runs, not about the method). Tables test several cells at once: `holm` adjusts.

    result = paired_test(ranks_a, ranks_b, "ndcg10")       # ranks_*: list over seeds of (N,) arrays
    result.p_value, result.ci_low, result.ci_high           # two-sided, 95% interval of mean(A - B)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

METHODS = {
    "runs": "paired t-test over training runs",
    "cases": "paired t-test over (run, case) pairs, test-set variance only",
}
DEFAULT_METHOD = "runs"
# One sentence for every table that reports the default test (report.py, compare).
DEFAULT_TEST_NOTE = ("two-sided paired t-test over training runs: seed i of A with seed i of B, each run's mean "
                     "over the same test cases and candidates one observation (n − 1 degrees of freedom; "
                     "dpgdiff/significance.py)")


def per_case(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-case values of a metric from ranks (1 = best): mrr, mrr10, ndcgK, hrK (spec §5.3)."""
    r = np.asarray(ranks, dtype=np.float64)
    if metric == "mrr":
        return 1.0 / r
    if metric == "mrr10":
        return np.where(r <= 10, 1.0 / r, 0.0)
    for prefix, fn in (("ndcg", lambda k: np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)),
                       ("hr", lambda k: (r <= k).astype(np.float64))):
        if metric.startswith(prefix) and metric[len(prefix):].isdigit():
            return fn(int(metric[len(prefix):]))
    raise ValueError(f"unknown metric {metric!r}; expected mrr, mrr10, ndcgK or hrK")


@dataclass(frozen=True)
class PairedResult:
    metric: str
    test: str  # METHODS[method]
    n_pairs: int  # the observations the test used: runs ("runs") or (run, case) pairs ("cases")
    mean_a: float
    mean_b: float
    diff: float  # mean(A - B)
    rel_diff: float  # diff / mean_b
    ci_low: float  # 95% interval of the mean difference (nan with one run under "runs")
    ci_high: float
    p_value: float  # two-sided (nan with one run under "runs")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def missing(cls, metric: str) -> "PairedResult":
        """No test: the ranks it needs are not there (e.g. runs evaluated without full ranking)."""
        return cls(metric, METHODS[DEFAULT_METHOD], 0, *(math.nan,) * 7)


def _paired_t(d: np.ndarray) -> tuple[float, float, float]:
    """(p, low, high) of a two-sided one-sample t-test of the differences d against 0, with its 95% interval."""
    from scipy import stats  # a dependency of mlflow already; imported here to keep dpgdiff's import light

    mean_d = float(d.mean())
    if d.size < 2:
        return math.nan, math.nan, math.nan
    if not np.any(d != d[0]):  # no spread: the difference is exactly known
        return (1.0 if mean_d == 0.0 else 0.0), mean_d, mean_d
    test = stats.ttest_1samp(d, 0.0)
    interval = test.confidence_interval(0.95)
    return float(test.pvalue), float(interval.low), float(interval.high)


def paired_test(
    ranks_a: Sequence[np.ndarray],
    ranks_b: Sequence[np.ndarray],
    metric: str,
    *,
    method: str = DEFAULT_METHOD,
) -> PairedResult:
    """Two-sided paired test of mean per-case `metric`, A against B; ranks_a[i] pairs with ranks_b[i] case by case.

    method "runs" (default): d_i = mean over cases of A's run i minus B's run i; a t-test of the n values d_i.
    method "cases": a t-test of all n·N per-case differences pooled (test-set variance only)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if len(ranks_a) != len(ranks_b) or not ranks_a:
        raise ValueError(f"need the same number (>= 1) of seeds for both models, got {len(ranks_a)} and {len(ranks_b)}")
    for i, (a, b) in enumerate(zip(ranks_a, ranks_b)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"seed {i}: {np.shape(a)} vs {np.shape(b)} cases; both models must rank the same cases")
    per_a = [per_case(r, metric) for r in ranks_a]
    per_b = [per_case(r, metric) for r in ranks_b]
    if method == "runs":
        d = np.array([a.mean() - b.mean() for a, b in zip(per_a, per_b)])
    else:
        d = np.concatenate(per_a) - np.concatenate(per_b)
    p, low, high = _paired_t(d)
    mean_a, mean_b = float(np.concatenate(per_a).mean()), float(np.concatenate(per_b).mean())
    diff = mean_a - mean_b  # every run ranks the same cases, so the mean of d_i is the pooled difference too
    return PairedResult(metric, METHODS[method], int(d.size), mean_a, mean_b, diff,
                        diff / mean_b if mean_b else math.nan, low, high, p)


def format_p(p: float) -> str:
    """A p-value for a table: two significant digits; "n/a" where the test had too few runs."""
    return "n/a" if math.isnan(p) else f"{p:.2g}"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values, in their order; nan stays nan.

    Controls the chance of any false claim in the family at α without assuming independence."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running, m = 0.0, len(indexed)
    for k, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted


# --------------------------------------------------------------------------------------------
# Comparing `python -m dpgdiff train` output folders (`python -m dpgdiff compare`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """What a train output folder holds for a comparison: its folder, validation MRR sum, test ranks, protocol."""

    folder: str
    best_val: float
    ranks: dict  # "x", "y", "full_x", "full_y" -> (N,) ranks of the best state's test pass
    protocol: tuple  # (dataset fingerprint, split, eval.n_negatives, eval.candidate_seed, eval.ties)


def read_run(folder: str) -> RunRecord:
    """Read metrics.json, config.yaml and test_ranks.npz of one `train --out` folder (ValueError naming the file)."""
    import json
    from pathlib import Path

    import yaml

    root = Path(folder)
    files = {name: root / name for name in ("metrics.json", "config.yaml", "test_ranks.npz")}
    for name, path in files.items():
        if not path.is_file():
            raise ValueError(f"{path}: missing; expected a folder written by `python -m dpgdiff train --out`")
    try:
        metrics = json.loads(files["metrics.json"].read_text())
        config = yaml.safe_load(files["config.yaml"].read_text()) or {}
        meta, ev = metrics["dataset"], config.get("eval", {})
        protocol = (meta["fingerprint"], meta["split"], ev.get("n_negatives"), ev.get("candidate_seed"), ev.get("ties"))
        best_val = float(metrics["best_val"]["val_mrr_sum"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{root}: metrics.json or config.yaml is not what train writes ({exc!r})") from exc
    from dpgdiff.evaluation import load_ranks  # the reader of EvalResult.save_ranks; lazy: it imports torch

    return RunRecord(str(root), best_val, load_ranks(files["test_ranks.npz"]), protocol)


def compare_runs(runs_a: Sequence[RunRecord], runs_b: Sequence[RunRecord], metrics: Sequence[str] = ("ndcg10",)) -> str:
    """A markdown table: per domain and metric, mean ± std over seeds of A and B (×100) and the paired test of A - B.

    runs_a[i] pairs with runs_b[i] (same seed); every run must share one evaluation protocol (same data, split and
    saved candidates), which is what makes per-case pairs meaningful."""
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"need as many A runs as B runs (seed i with seed i), got {len(runs_a)} and {len(runs_b)}")
    protocols = {r.protocol for r in [*runs_a, *runs_b]}
    if len(protocols) != 1:
        folders = ", ".join(f"{r.folder}: {r.protocol[1]} n_negatives={r.protocol[2]} seed={r.protocol[3]}"
                            for r in [*runs_a, *runs_b])
        raise ValueError(f"the runs were not evaluated alike (dataset fingerprint, split, eval.n_negatives, "
                         f"eval.candidate_seed, eval.ties must match): {folders}")

    def mean_std(values: list[float]) -> str:
        v = 100 * np.asarray(values)
        return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if v.size > 1 else f"{v.mean():.2f}"

    rows = ["| ranking | domain | metric | A | B | A - B ×100 [95% CI] | p |", "|---|---|---|---:|---:|---:|---:|"]
    for ranking, prefix in (("sampled", ""), ("full", "full_")):
        for domain in ("x", "y"):
            key = prefix + domain
            for metric in metrics:
                res = paired_test([r.ranks[key] for r in runs_a], [r.ranks[key] for r in runs_b], metric)
                per_a = [float(per_case(r.ranks[key], metric).mean()) for r in runs_a]
                per_b = [float(per_case(r.ranks[key], metric).mean()) for r in runs_b]
                rows.append(f"| {ranking} | {domain.upper()} | {metric} | {mean_std(per_a)} | {mean_std(per_b)} | "
                            f"{100 * res.diff:+.2f} [{100 * res.ci_low:+.2f}, {100 * res.ci_high:+.2f}] | "
                            f"{format_p(res.p_value)} |")
    val = "validation MRR_X + MRR_Y (best epoch) of A: {}; of B: {}".format(
        *(", ".join(f"{r.best_val:.4f}" for r in runs) for runs in (runs_a, runs_b)))
    return "\n".join([val, f"test, ×100, mean ± std over the runs; A - B: {DEFAULT_TEST_NOTE} (run i of A with run "
                             "i of B: the order given)", "", *rows])
