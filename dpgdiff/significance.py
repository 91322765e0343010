"""Paired significance of one model against another on the same test cases (per-case metrics from saved ranks).

The paper claims p < 0.05 without naming a test. Here the test is named and reproducible: both models rank the
same cases against the same saved candidates (the shared evaluator), so every case gives a pair of per-case
metric values. With several seeds per model, seed i of A is paired with seed i of B on each case, and all
(seed, case) pairs are pooled.

    result = paired_test(ranks_a, ranks_b, "ndcg10")       # ranks_*: list over seeds of (N,) arrays
    result.p_value, result.ci_low, result.ci_high           # two-sided paired t-test, 95% interval of mean(A - B)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


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
    test: str  # "paired t-test" or "paired bootstrap"
    n_pairs: int
    mean_a: float
    mean_b: float
    diff: float  # mean(A - B)
    rel_diff: float  # diff / mean_b
    ci_low: float  # 95% interval of the mean difference
    ci_high: float
    p_value: float  # two-sided

    def to_dict(self) -> dict:
        return asdict(self)


def paired_test(
    ranks_a: Sequence[np.ndarray],
    ranks_b: Sequence[np.ndarray],
    metric: str,
    *,
    method: str = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedResult:
    """Two-sided paired test of mean per-case `metric`, A against B; ranks_a[i] pairs with ranks_b[i] case by case.

    method "t": paired t-test on the per-case differences (scipy.stats.ttest_rel), with the t interval.
    method "bootstrap": resample pairs with replacement; percentile interval; p = twice the smaller tail of the
    resampled mean differences around 0 (at least 1 / n_boot)."""
    if len(ranks_a) != len(ranks_b) or not ranks_a:
        raise ValueError(f"need the same number (>= 1) of seeds for both models, got {len(ranks_a)} and {len(ranks_b)}")
    for i, (a, b) in enumerate(zip(ranks_a, ranks_b)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"seed {i}: {np.shape(a)} vs {np.shape(b)} cases; both models must rank the same cases")
    a = np.concatenate([per_case(r, metric) for r in ranks_a])
    b = np.concatenate([per_case(r, metric) for r in ranks_b])
    d = a - b
    n = d.size
    mean_d = float(d.mean())
    if method == "t":
        from scipy import stats  # a dependency of mlflow already; imported here to keep dpgdiff's import light

        if n < 2 or not np.any(d != d[0]):
            p, low, high = (1.0 if mean_d == 0.0 else 0.0), mean_d, mean_d
        else:
            test = stats.ttest_rel(a, b)
            interval = test.confidence_interval(0.95)
            p, low, high = float(test.pvalue), float(interval.low), float(interval.high)
        name = "paired t-test"
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = np.empty(n_boot)
        for i in range(n_boot):
            means[i] = d[rng.integers(0, n, n)].mean()
        low, high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
        tail = min((means <= 0).mean(), (means >= 0).mean())
        p = float(min(1.0, 2.0 * max(tail, 1.0 / n_boot)))
        name = "paired bootstrap"
    else:
        raise ValueError(f"unknown method {method!r}; expected 't' or 'bootstrap'")
    mean_b = float(b.mean())
    return PairedResult(metric, name, n, float(a.mean()), mean_b, mean_d,
                        mean_d / mean_b if mean_b else math.nan, float(low), float(high), float(p))


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
                            f"{res.p_value:.2g} |")
    val = "validation MRR_X + MRR_Y (best epoch) of A: {}; of B: {}".format(
        *(", ".join(f"{r.best_val:.4f}" for r in runs) for runs in (runs_a, runs_b)))
    return "\n".join([val, "test, ×100, mean ± std over the runs; A - B: two-sided paired t-test, run i of A with "
                             "run i of B on the same cases and candidates, all (run, case) pairs pooled", "", *rows])
