"""Popularity and random baselines through the shared Evaluator (sanity anchors for every model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpgdiff.baselines import PopularityScorer, RandomScorer
from dpgdiff.config import EvalConfig
from dpgdiff.data import ItemSpace
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y
from dpgdiff.evaluation import Evaluator
from tests.test_evaluation import cases, make_dataset, random_cases


def binomial_bound(p: float, n: int, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


def test_random_scorer_hr10_near_one_percent(tmp_path):
    """Uniform scores put the positive in the top 10 of 1,000 candidates with probability 1%."""
    items = ItemSpace(1500, 1200)
    ds = make_dataset(tmp_path, items, random_cases(items, 3000, 15, seed=11))
    ev = Evaluator(ds, "test", EvalConfig(batch_size=512))
    res = ev.evaluate(RandomScorer(0, ds))
    for d, n_items in (("x", 1500), ("y", 1200)):
        n = res.n_cases[d]
        assert n > 1200
        m = res.per_domain[d]
        assert abs(m["hr10"] - 0.01) < binomial_bound(0.01, n), m
        assert abs(m["hr1"] - 0.001) < binomial_bound(0.001, n), m
        p_full = 10 / (n_items - 8)  # about 8 history items of the domain are left out
        assert abs(m["full_hr10"] - p_full) < binomial_bound(p_full, n) + 0.001, m
    # The same seed gives the same scores; the result is reproducible.
    assert ev.evaluate(RandomScorer(0, ds)).flat("t") == res.flat("t")
    assert ev.evaluate(RandomScorer(1, ds)).flat("t") != res.flat("t")


def test_random_scorer_needs_sizes():
    with pytest.raises(RuntimeError, match="bind"):
        RandomScorer(0)(torch.zeros(2, 15, dtype=torch.long), DOMAIN_X)
    s = RandomScorer(0).bind(ItemSpace(7, 9))
    assert s(torch.zeros(2, 15, dtype=torch.long), DOMAIN_Y).shape == (2, 9)


def test_popularity_scorer_scores_are_counts(tmp_path):
    items = ItemSpace(5, 4)  # X internal 1..5, Y 6..9
    train = [np.array([1, 1, 6, 2, 7, 7, 7]), np.array([3, 1, 9])]
    test = cases([[2, 6], [4, 7]], [1, 8], items, width=3)
    ds = make_dataset(tmp_path, items, test, train_sequences=train)
    pop = PopularityScorer(ds)
    h = torch.from_numpy(test.history)
    assert pop(h, DOMAIN_X).tolist() == [[3, 1, 1, 0, 0]] * 2
    assert pop(h, DOMAIN_Y).tolist() == [[1, 3, 0, 1]] * 2
    ev = Evaluator(ds, "test", EvalConfig(n_negatives=2, ties="pess"))
    res = ev.evaluate(pop)
    # X case: target 1 is the most popular item -> rank 1 in both rankings.
    assert res.ranks["x"].tolist() == [1.0]
    assert res.full_ranks["x"].tolist() == [1.0]
    # Y case: target 8 (count 0) is beaten by items 6 and 9 (count 1); history item 7 (count 3) is left out.
    # Only 6 and 9 are allowed negatives, so the sampled ranking is the full one here.
    assert res.ranks["y"].tolist() == [3.0]
    assert res.full_ranks["y"].tolist() == [3.0]


def test_popularity_beats_random_on_synthetic(synthetic_dataset):
    ev = Evaluator(synthetic_dataset, "test", EvalConfig())
    pop = ev.evaluate(PopularityScorer(synthetic_dataset))
    rnd = ev.evaluate(RandomScorer(0, synthetic_dataset))
    assert pop.mrr_sum > 2 * rnd.mrr_sum, (pop.table(), rnd.table())


@pytest.mark.data
def test_food_kitchen_baselines(food_kitchen):
    """On Food-Kitchen test: random sits at HR@10 = 1% (4 sigma), popularity is far above it."""
    ev = Evaluator(food_kitchen, "test", EvalConfig())
    rnd = ev.evaluate(RandomScorer(0, food_kitchen))
    pop = ev.evaluate(PopularityScorer(food_kitchen))
    assert rnd.n_cases == {"x": 2747, "y": 5659}
    for d in ("x", "y"):
        n = rnd.n_cases[d]
        assert abs(rnd.per_domain[d]["hr10"] - 0.01) < binomial_bound(0.01, n), rnd.table()
        # Popularity: more than 6 sigma above random on sampled HR@10 and above it on full-ranking MRR.
        assert pop.per_domain[d]["hr10"] > 0.01 + binomial_bound(0.01, n, 6.0), pop.table()
        assert pop.per_domain[d]["full_mrr"] > rnd.per_domain[d]["full_mrr"], pop.table()
    assert pop.mrr_sum > 3 * rnd.mrr_sum
