"""Paired significance tests on per-case metrics (dpgdiff.significance)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dpgdiff.significance import paired_test, per_case


def test_per_case_metrics_follow_the_rank_formulas():
    r = np.array([1.0, 2.0, 10.0, 11.0, 3.5])
    assert per_case(r, "mrr") == pytest.approx(1 / r)
    assert per_case(r, "hr10") == pytest.approx([1, 1, 1, 0, 1])
    assert per_case(r, "ndcg10") == pytest.approx([1, 1 / np.log2(3), 1 / np.log2(11), 0, 1 / np.log2(4.5)])
    assert per_case(r, "mrr10") == pytest.approx([1, 0.5, 0.1, 0, 1 / 3.5])
    with pytest.raises(ValueError, match="unknown metric"):
        per_case(r, "auc")


def _ranks(rng, n, shift):
    return np.maximum(1.0, rng.geometric(0.08, n) - shift).astype(float)


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_a_real_difference_is_found_and_none_is_not(method):
    rng = np.random.default_rng(0)
    base = [_ranks(rng, 3000, 0) for _ in range(3)]
    better = [np.maximum(1.0, r - 3) for r in base]  # the same cases, each ranked 3 places higher
    res = paired_test(better, base, "ndcg10", method=method, n_boot=2000)
    floor = 1e-6 if method == "t" else 2 / 2000  # a bootstrap cannot resolve p below 2 / n_boot
    assert res.diff > 0 and res.p_value <= floor and res.ci_low > 0 and res.n_pairs == 9000
    noise = [r.copy() for r in base]
    for r in noise:
        rng.shuffle(r)  # same distribution, no pairing advantage
    res = paired_test(noise, base, "ndcg10", method=method, n_boot=2000)
    assert res.p_value > 0.01 and res.ci_low < 0 < res.ci_high


def test_t_matches_scipy_on_the_pooled_pairs():
    rng = np.random.default_rng(1)
    a = [_ranks(rng, 500, 1), _ranks(rng, 500, 1)]
    b = [_ranks(rng, 500, 0), _ranks(rng, 500, 0)]
    res = paired_test(a, b, "mrr")
    va, vb = np.concatenate([1 / x for x in a]), np.concatenate([1 / x for x in b])
    assert res.p_value == pytest.approx(stats.ttest_rel(va, vb).pvalue)
    assert res.diff == pytest.approx((va - vb).mean()) and res.test == "paired t-test"


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="same number"):
        paired_test([np.ones(3)], [np.ones(3), np.ones(3)], "mrr")
    with pytest.raises(ValueError, match="same cases"):
        paired_test([np.ones(3)], [np.ones(4)], "mrr")
