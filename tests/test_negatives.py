"""Sampled softmax (loss.ce_impl=sampled): the negative sources, their logQ corrections, config checks, models."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dpgdiff.config import Config, ConfigError
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y
from dpgdiff.models import build_model
from dpgdiff.models.losses import domain_cross_entropy
from dpgdiff.models.negatives import SOURCES, NegativeSampler, successive_sampling_inclusion

torch.set_num_threads(1)

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
SIZES = (50, 70)  # items of domains X and Y


def _zipf_counts(v: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation((200.0 / np.arange(1, v + 1)).astype(np.int64))  # some zero counts too


def _case(seed: int = 3, rows: int = 40, dim: int = 8, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    tables = [leaf(v, dim) for v in SIZES]
    biases = [leaf(v) for v in SIZES]
    heads = [leaf(rows, dim) for _ in range(2)]
    dom = torch.randint(0, 2, (rows,), generator=g)
    local = torch.where(dom == 0, torch.randint(0, SIZES[0], (rows,), generator=g),
                        torch.randint(0, SIZES[1], (rows,), generator=g))
    return tables, biases, heads, dom.to(device), local.to(device)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("norm", ["per_domain_mean", "global_mean"])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_all_items_as_negatives_equal_the_full_softmax(source, norm, device):
    """With N = V, every item is drawn once (π = 1, so each logQ correction is 0) and the masked positive
    leaves exactly the full softmax: loss and gradients (tables, biases, heads) equal `full` to 1e-5.
    (On CUDA the draws come from a CPU generator and are moved, as in training with a CPU generator.)"""
    tables, biases, heads, dom, local = _case(device=device)
    counts = [_zipf_counts(v, i) for i, v in enumerate(SIZES)]
    results = []
    for impl in ("full", "sampled"):
        for t in tables + biases + heads:
            t.grad = None
        sampler = NegativeSampler(source, max(SIZES), alpha=0.6, counts=counts)
        losses = domain_cross_entropy(heads, local, dom, tables, 0.5, norm, impl, 0,
                                      torch.Generator().manual_seed(1), 256, biases, sampler)
        sum(losses).backward()
        results.append([x.detach() for x in losses] + [t.grad.clone() for t in tables + biases + heads])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()


def test_fewer_negatives_are_not_the_full_softmax():
    """The check above can fail: with N < V the sampled loss differs from the full one."""
    tables, biases, heads, dom, local = _case()
    full = domain_cross_entropy(heads, local, dom, tables, impl="full")
    sampled = domain_cross_entropy(heads, local, dom, tables, impl="sampled", n_negatives=10,
                                   generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(full[0], sampled[0], rtol=1e-3)


@pytest.mark.parametrize("source", SOURCES)
def test_corrected_sums_estimate_the_full_normaliser(source):
    """Σ_{j∈S} exp(o_j - log π_j) is an (approximately, for popularity's π) unbiased estimate of Σ_j exp(o_j):
    its mean over 4000 draws is within 3% of the true sum (the uncorrected sum is N/V of it: far off)."""
    v, n, draws = 70, 12, 4000
    counts = [_zipf_counts(50, 0), _zipf_counts(v, 1)]
    sampler = NegativeSampler(source, n, alpha=0.8, counts=counts)
    logits = torch.randn(v, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.tensor([0, 3, 3, 17])  # mixed: the in-batch targets
    g = torch.Generator().manual_seed(2)
    total = 0.0
    for _ in range(draws):
        neg, log_pi = sampler.draw(DOMAIN_Y, v, targets, g)
        assert neg.unique().numel() == neg.numel(), "drawn without replacement"
        total += float(torch.exp(logits[neg] - log_pi).sum())
    assert total / draws == pytest.approx(float(logits.exp().sum()), rel=0.03)


def test_popularity_draws_follow_the_proposal():
    """Empirical inclusion frequencies of popularity draws (α = 0.5) match the sampler's π_j
    (1 - exp(-t q_j), q ∝ (count + 1)^α) within 4 binomial standard errors + 0.01 for the approximation,
    and are far from what α = 1 or uniform sampling would give."""
    v, n, draws = 40, 8, 5000
    counts = _zipf_counts(v, 5)
    sampler = NegativeSampler("popularity", n, alpha=0.5, counts=[counts, counts])
    g = torch.Generator().manual_seed(11)
    hits = torch.zeros(v)
    for _ in range(draws):
        neg, _ = sampler.draw(DOMAIN_X, v, torch.zeros(1, dtype=torch.long), g)
        hits[neg] += 1
    freq = (hits / draws).double().numpy()
    pi = np.exp(sampler.popularity(DOMAIN_X, torch.device("cpu"))[1].numpy())
    assert pi.sum() == pytest.approx(n, rel=1e-9)
    tolerance = 4 * np.sqrt(pi * (1 - pi) / draws) + 0.01
    assert np.all(np.abs(freq - pi) <= tolerance), np.abs(freq - pi).max()
    for other in (successive_sampling_inclusion((counts + 1.0) ** 1.0, n), np.full(v, n / v)):
        assert np.abs(freq - other).max() > 0.1


def test_inclusion_probabilities_of_successive_sampling():
    q = np.array([0.5, 0.3, 0.2])
    assert np.allclose(successive_sampling_inclusion(q, 3), 1.0)
    pi = successive_sampling_inclusion(q, 1)
    assert pi.sum() == pytest.approx(1.0) and np.all(np.diff(pi) < 0)  # more popular, more often
    assert np.allclose(successive_sampling_inclusion(np.ones(10), 4), 0.4)  # uniform: N / V


def test_mixed_keeps_the_in_batch_targets_and_draws_the_others_uniformly():
    sampler = NegativeSampler("mixed", 5)
    targets = torch.tensor([4, 9, 4])
    neg, log_pi = sampler.draw(DOMAIN_X, 30, targets, torch.Generator().manual_seed(0))
    assert neg[:2].tolist() == [4, 9] and torch.all(log_pi[:2] == 0)  # in the sample for certain
    assert neg.numel() == 7 and neg.unique().numel() == 7 and not set(neg[2:].tolist()) & {4, 9}
    assert torch.allclose(log_pi[2:], torch.tensor(math.log(5 / 28), dtype=torch.float64))


def test_the_sampled_loss_masks_a_negative_equal_to_the_positive():
    """A row's positive drawn as a negative (its own in-batch target, with `mixed`) is not in its normaliser
    twice: the loss equals the CE over [positive, negatives other than it] built by hand."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(20, 4, generator=g, dtype=torch.float64)
    h = torch.randn(3, 4, generator=g, dtype=torch.float64)
    local = torch.tensor([2, 5, 2])
    dom = torch.zeros(3, dtype=torch.long)
    sampler = NegativeSampler("mixed", 4)
    (loss,) = domain_cross_entropy([h], local, dom, (table, table), impl="sampled",
                                   generator=torch.Generator().manual_seed(4), sampler=sampler)
    neg, log_pi = NegativeSampler("mixed", 4).draw(DOMAIN_X, 20, local, torch.Generator().manual_seed(4))
    expected = 0.0
    for i in range(3):
        keep = neg != local[i]
        logits = torch.cat([h[i] @ table[local[i]][None].t(), h[i] @ table[neg[keep]].t() - log_pi[keep]])
        expected += float(torch.logsumexp(logits, 0) - logits[0]) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("overrides, expected", [
    ({"loss.ce_negative_source": "hard"}, ["loss.ce_negative_source='hard'", "uniform", "popularity", "mixed"]),
    ({"loss.ce_popularity_alpha": 1.5}, ["loss.ce_popularity_alpha=1.5", "0 <= alpha <= 1"]),
    ({"loss.ce_popularity_alpha": -0.1}, ["loss.ce_popularity_alpha=-0.1"]),
    ({"loss.ce_negatives": 0}, ["loss.ce_negatives=0", ">= 1"]),
    ({"model.name": "diffurec", "loss.ce_impl": "sampled"}, ["loss.ce_impl", "DiffuRec's full softmax"]),
])
def test_bad_sampled_settings_are_named(overrides, expected):
    with pytest.raises(ConfigError) as err:
        Config().with_overrides(overrides, source="cfg.yaml")
    for part in expected:
        assert part in str(err.value)


def test_as_many_negatives_as_items_is_refused_when_the_model_is_built(synthetic_dataset):
    config = Config().with_overrides({"model.dim": 16, "loss.ce_impl": "sampled", "loss.ce_negatives": 1200})
    with pytest.raises(ConfigError, match=r"loss.ce_negatives=1200 must be below .*\(1200 X, 1200 Y items\)"):
        build_model(config, synthetic_dataset)
    full = config.with_overrides({"loss.ce_impl": "full"})
    assert build_model(full, synthetic_dataset).negatives is None  # unused with the full softmax


@pytest.mark.parametrize("name", ["dpgdiff", "sasrec", "sasrec_single"])
@pytest.mark.parametrize("source", SOURCES)
def test_models_train_with_each_negative_source(synthetic_dataset, name, source):
    """DPG-Diff, SASRec and SASRec-single share the option; popularity draws by the dataset's counts."""
    config = Config().with_overrides({
        "model.name": name, "model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 8,
        "diffusion.schedule": "cosine", "loss.ce_impl": "sampled", "loss.ce_negatives": 64,
        "loss.ce_negative_source": source, "model.item_bias": "zero"})
    torch.manual_seed(0)
    model = build_model(config, synthetic_dataset)
    assert model.negative_sampler() is model.negatives and model.negatives.source == source
    if source == "popularity":
        items, counts = synthetic_dataset.items, synthetic_dataset.item_counts()
        assert np.array_equal(model.negatives.counts[DOMAIN_Y],
                              counts[items.offset(DOMAIN_Y): items.offset(DOMAIN_Y) + items.n_items_y])
    ex = synthetic_dataset.training_examples("prefix")
    idx = np.arange(48)
    batch = (torch.as_tensor(ex.history[idx]), torch.as_tensor(ex.target[idx]),
             torch.as_tensor(ex.target_domain[idx]).long())
    out = model.loss(*batch, generator=torch.Generator().manual_seed(0))
    out["total"].backward()
    assert torch.isfinite(out["total"])
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _commented_sampled_entries(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\s*#\s*loss\.ce_(impl|negatives|negative_source|"
                                                           r"popularity_alpha):", line)]


@pytest.mark.parametrize("name", ["food_kitchen-cpu", "food_kitchen-cpu-sasrec", "food_kitchen-cpu-sasrec-single",
                                  "movie_book-cpu", "default-cpu"])
def test_the_commented_sampled_entries_of_the_cpu_spaces_parse_when_uncommented(name):
    """The CPU spaces carry the sampled-softmax knobs commented out (BENCHMARKS.md, issue 26: in only if it
    pays); uncommented, they form a valid space whose every sampled config validates."""
    from tune.space import load_space, parse_space

    path = SPACES / f"{name}.yaml"
    text = path.read_text()
    entries = _commented_sampled_entries(text)
    assert len(entries) == 4, entries
    assert "BENCHMARKS.md" in text and "ce_impl" not in load_space(path).params  # `full` stays the default
    uncommented = text
    for line in entries:
        uncommented = uncommented.replace(line, re.sub(r"^(\s*)#\s*", r"\1", line), 1)
    space = parse_space(yaml.safe_load(uncommented), source=f"{path} (uncommented)", text=uncommented)
    assert space.params["loss.ce_impl"].values == ("full", "sampled")
    assert set(space.params["loss.ce_negative_source"].values) == set(SOURCES)
    negatives = space.params["loss.ce_negatives"]
    assert negatives.low == 256 and negatives.high == 4096
    for source in SOURCES:
        Config().with_overrides({**space.fixed, "loss.ce_impl": "sampled", "loss.ce_negatives": negatives.high,
                                 "loss.ce_negative_source": source, "loss.ce_popularity_alpha": 1.0})
