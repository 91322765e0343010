"""Negative sources of the sampled softmax (loss.ce_impl=sampled) and their logQ corrections.

The sampled softmax replaces the full normaliser Z_i = Σ_j exp(o_ij) over a domain's V items by the
positive plus a shared sample S of that domain's items, each negative logit corrected by the log of its
inclusion probability π_j = P(j ∈ S):

    CE_i ≈ -o_i,pos + log( exp(o_i,pos) + Σ_{j∈S, j≠pos} exp(o_ij - log π_j) )

Σ_{j∈S} exp(o_j)/π_j is the Horvitz-Thompson estimate of Σ_j exp(o_j) (unbiased for any sampling design),
so this is Bengio & Senécal's importance-sampled softmax (2008, "Adaptive importance sampling to
accelerate training of a neural probabilistic language model") with a sample drawn without replacement;
"logQ correction" as in Yi et al. (2019, "Sampling-bias-corrected neural modeling for large corpus item
recommendations"). When S holds every item, π_j = 1 and the loss is the full softmax exactly.

Sources (loss.ce_negative_source), one draw per step and domain, shared by every row (and head) of it:
- uniform: N items without replacement (randperm), π_j = N / V.
- popularity: N items without replacement with probabilities q_j ∝ (count_j + 1)^α (the unigram^α
  proposal of word2vec; +1 so that items unseen in training can still be drawn; α = 0 is uniform).
  torch.multinomial without replacement is successive sampling (an exponential race: keys E_j / q_j,
  E_j ~ Exp(1), the N smallest win), whose exact π_j has no closed form; replacing the N-th smallest key
  by the t with Σ_j P(E_j / q_j < t) = N gives π_j ≈ 1 - exp(-t q_j), computed once per domain
  (tests/test_negatives.py checks it against the sampler's empirical inclusion frequencies).
- mixed: the domain's in-batch targets T plus N uniform items drawn without replacement from the others
  (mixed negative sampling: Yang, Yi et al. 2020, "Mixed negative sampling for learning two-tower neural
  networks in recommendations"). Given the batch, T is in S for certain (π = 1: its part of Z is exact)
  and the rest is a uniform sample of the V - |T| others (π = N / (V - |T|)); the matmul has |T| + N columns.
A negative equal to a row's positive (an accidental hit; always the case for its own in-batch target) is
masked out of that row by the caller (losses.domain_cross_entropy).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from dpgdiff.config import ConfigError, LossConfig
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace

SOURCES = ("uniform", "popularity", "mixed")


def successive_sampling_inclusion(q: np.ndarray, n: int) -> np.ndarray:
    """π_j ≈ 1 - exp(-t q_j) of drawing n of len(q) items without replacement with probabilities q (> 0),
    t solving Σ_j (1 - exp(-t q_j)) = n by bisection (see the module docstring); n = len(q) gives π = 1."""
    q = np.asarray(q, dtype=np.float64)
    q = q / q.sum()
    if n >= len(q):
        return np.ones_like(q)

    def expected(t: float) -> float:
        return float(-np.expm1(-t * q).sum())

    lo, hi = float(n), 2.0 * n  # 1 - exp(-x) <= x, so expected(t) <= t and the root is >= n
    while expected(hi) < n:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid) < n else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return -np.expm1(-0.5 * (lo + hi) * q)


class NegativeSampler:
    """The shared negatives of one domain for one step, with their log inclusion probabilities.

    source: uniform | popularity | mixed (module docstring); n_negatives: N; alpha: the popularity exponent;
    counts: (counts_x (N_x,), counts_y (N_y,)) training counts by local item index (popularity only)."""

    def __init__(self, source: str, n_negatives: int, alpha: float = 0.75,
                 counts: Optional[Sequence[np.ndarray]] = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown negative source {source!r}; expected one of {list(SOURCES)}")
        if n_negatives < 1:
            raise ValueError(f"n_negatives={n_negatives} must be >= 1")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in [0, 1]")
        if source == "popularity" and counts is None:
            raise ValueError("the popularity source needs the training item counts: build the model with "
                             "dpgdiff.models.build_model(config, dataset)")
        self.source, self.n_negatives, self.alpha = source, int(n_negatives), float(alpha)
        self.counts = None if counts is None else [np.asarray(c, dtype=np.float64) for c in counts]
        self._proposal: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, loss: LossConfig, items: ItemSpace, item_counts: Optional[np.ndarray] = None,
                    source: str = "config") -> "NegativeSampler":
        """The sampler of loss.ce_negative_source for `items`; item_counts (n_tokens,) by internal id as
        dataset.item_counts(). ConfigError when loss.ce_negatives does not fit the smaller domain."""
        smaller = min(items.n_items_x, items.n_items_y)
        if loss.ce_negatives >= smaller:
            raise ConfigError(
                f"{source}: loss.ce_negatives={loss.ce_negatives} must be below the item count of the smaller "
                f"domain ({items.n_items_x} X, {items.n_items_y} Y items) with loss.ce_impl=sampled; with that "
                f"many negatives use loss.ce_impl=full")
        counts = None
        if item_counts is not None:
            counts = [np.asarray(item_counts)[items.offset(d): items.offset(d) + items.n_items(d)]
                      for d in (DOMAIN_X, DOMAIN_Y)]
        return cls(loss.ce_negative_source, loss.ce_negatives, loss.ce_popularity_alpha, counts)

    def popularity(self, domain: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(q (V,) float32 proposal, log π (V,) float64) of `domain` on `device`, computed once."""
        key = (domain, str(device))
        if key not in self._proposal:
            q = np.power(self.counts[domain] + 1.0, self.alpha)
            q = q / q.sum()
            log_pi = np.log(successive_sampling_inclusion(q, self.n_negatives))
            self._proposal[key] = (torch.as_tensor(q, dtype=torch.float32, device=device),
                                   torch.as_tensor(log_pi, dtype=torch.float64, device=device))
        return self._proposal[key]

    def draw(self, domain: int, n_items: int, targets: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(negatives (M,) int64 local item ids, log π (M,) float64), on targets' device.

        targets (n,) local ids of the domain's rows (mixed only); the draws use `generator` on its device."""
        device = targets.device
        gen_device = generator.device if generator is not None else device
        n = min(self.n_negatives, n_items)
        if self.source == "uniform":
            neg = torch.randperm(n_items, generator=generator, device=gen_device)[:n].to(device)
            return neg, torch.full((n,), math.log(n / n_items), dtype=torch.float64, device=device)
        if self.source == "popularity":
            if self.counts is None or len(self.counts[domain]) != n_items:
                raise ValueError(f"the popularity counts of domain {domain} do not match its {n_items} items")
            q, log_pi = self.popularity(domain, gen_device)
            neg = torch.multinomial(q, n, replacement=False, generator=generator)
            return neg.to(device), log_pi.index_select(0, neg).to(device)
        in_batch = torch.unique(targets)  # mixed
        taken = torch.zeros(n_items, dtype=torch.bool, device=gen_device)
        taken[in_batch.to(gen_device)] = True
        perm = torch.randperm(n_items, generator=generator, device=gen_device)
        rest = n_items - in_batch.numel()
        n = min(n, rest)
        uniform = perm[~taken[perm]][:n].to(device)
        log_pi = torch.cat([torch.zeros(in_batch.numel(), dtype=torch.float64, device=device),
                            torch.full((n,), math.log(n / rest) if n else 0.0, dtype=torch.float64, device=device)])
        return torch.cat([in_batch, uniform]), log_pi
