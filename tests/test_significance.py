"""Paired significance tests on per-case metrics (dpgdiff.significance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dpgdiff.significance import METHODS, format_p, holm, paired_test, per_case


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


def _runs(rng, n_runs, n_cases, shift):
    """n_runs runs of the same cases; each run drifts by its own offset, as training seeds do."""
    base = _ranks(rng, n_cases, 0)
    return [np.maximum(1.0, base - shift - rng.integers(-2, 3)) for _ in range(n_runs)]


@pytest.mark.parametrize("method", ["runs", "cases"])
def test_a_real_difference_is_found_and_none_is_not(method):
    rng = np.random.default_rng(0)
    base = [_ranks(rng, 3000, 0) for _ in range(5)]
    better = [np.maximum(1.0, r - 3 - i % 2) for i, r in enumerate(base)]  # every case ranked 3-4 places higher
    res = paired_test(better, base, "ndcg10", method=method)
    assert res.diff > 0 and res.p_value < 0.01 and res.ci_low > 0
    assert res.n_pairs == (5 if method == "runs" else 15000)
    noise = [r.copy() for r in base]
    for r in noise:
        rng.shuffle(r)  # same distribution, no pairing advantage
    res = paired_test(noise, base, "ndcg10", method=method)
    assert res.p_value > 0.01 and res.ci_low < 0 < res.ci_high


def test_runs_is_a_t_test_of_the_per_run_means_and_cases_pools_the_pairs():
    rng = np.random.default_rng(1)
    a, b = _runs(rng, 4, 500, 1), _runs(rng, 4, 500, 0)
    res = paired_test(a, b, "mrr")
    means_a, means_b = [np.mean(1 / x) for x in a], [np.mean(1 / x) for x in b]
    assert res.p_value == pytest.approx(stats.ttest_rel(means_a, means_b).pvalue)
    assert res.diff == pytest.approx(np.mean(means_a) - np.mean(means_b)) and res.test == METHODS["runs"]
    pooled = paired_test(a, b, "mrr", method="cases")
    va, vb = np.concatenate([1 / x for x in a]), np.concatenate([1 / x for x in b])
    assert pooled.p_value == pytest.approx(stats.ttest_rel(va, vb).pvalue) and pooled.diff == pytest.approx(res.diff)


def test_one_run_has_no_run_level_test():
    rng = np.random.default_rng(2)
    a, b = _runs(rng, 1, 300, 2), _runs(rng, 1, 300, 0)
    res = paired_test(a, b, "ndcg10")
    assert np.isnan(res.p_value) and np.isnan(res.ci_low) and res.diff > 0 and format_p(res.p_value) == "n/a"
    assert paired_test(a, b, "ndcg10", method="cases").p_value < 1  # the case-level test still runs


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    adjusted = holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="same number"):
        paired_test([np.ones(3)], [np.ones(3), np.ones(3)], "mrr")
    with pytest.raises(ValueError, match="same cases"):
        paired_test([np.ones(3)], [np.ones(4)], "mrr")
    with pytest.raises(ValueError, match="unknown method"):
        paired_test([np.ones(3)], [np.ones(3)], "mrr", method="t")


def _train_folder(root, name, ranks_x, ranks_y, *, n_negatives=999, fingerprint="f" * 64, best_val=0.1):
    """A folder shaped like `python -m dpgdiff train --out`: metrics.json, config.yaml, test_ranks.npz."""
    import json

    folder = root / name
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({
        "best_val": {"val_mrr_sum": best_val},
        "dataset": {"name": "d", "split": "c2dsr", "fingerprint": fingerprint}}))
    (folder / "config.yaml").write_text(f"eval:\n  n_negatives: {n_negatives}\n  candidate_seed: 2040\n  ties: avg\n")
    np.savez(folder / "test_ranks.npz", x=ranks_x, y=ranks_y, full_x=ranks_x * 30, full_y=ranks_y * 30)
    return str(folder)


def test_compare_command_pairs_runs_by_position_and_refuses_unlike_protocols(tmp_path, capsys):
    from dpgdiff.cli import main

    rng = np.random.default_rng(1)
    base = [(_ranks(rng, 800, 0), _ranks(rng, 900, 0)) for _ in range(2)]
    a = [_train_folder(tmp_path, f"a{i}", np.maximum(1.0, x - 4), y, best_val=0.2) for i, (x, y) in enumerate(base)]
    b = [_train_folder(tmp_path, f"b{i}", x, y) for i, (x, y) in enumerate(base)]
    assert main(["compare", "--a", ",".join(a), "--b", ",".join(b), "--metrics", "ndcg10,hr10"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in out.splitlines() if line.startswith("| ")}
    expected = paired_test([x for x, _ in base], [x for x, _ in base], "ndcg10")  # sanity: B against itself
    assert expected.diff == 0
    x_row = rows[("sampled", "X", "ndcg10")].split("|")
    assert float(x_row[6].split()[0]) > 0 and float(x_row[7]) < 0.05  # A ranks every X case higher: found
    y_row = rows[("sampled", "Y", "ndcg10")].split("|")
    assert y_row[6].split()[0] == "+0.00" and float(y_row[7]) == 1.0  # identical Y ranks: no difference
    assert "of A: 0.2000, 0.2000; of B: 0.1000, 0.1000" in out

    other = _train_folder(tmp_path, "c0", base[0][0], base[0][1], n_negatives=99)
    assert main(["compare", "--a", a[0], "--b", other]) == 2
    assert "not evaluated alike" in capsys.readouterr().err
    assert main(["compare", "--a", ",".join(a), "--b", b[0]]) == 2
    assert "as many A runs as B runs" in capsys.readouterr().err
    assert main(["compare", "--a", a[0], "--b", str(tmp_path / "missing")]) == 2
    assert "missing/metrics.json: missing" in capsys.readouterr().err
