"""Non-learned reference scorers: item popularity and uniform random scores (plain `Scorer`s).

    evaluator.evaluate(PopularityScorer(dataset))   # well above random on real data
    evaluator.evaluate(RandomScorer(0, dataset))        # HR@10 ~ 10/1000 over 1000 sampled candidates
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace

if TYPE_CHECKING:
    from dpgdiff.data.dataset import CrossDomainDataset


class PopularityScorer:
    """Scores every item of the target domain by its number of training interactions (dataset.item_counts()).

    The score row does not depend on the history; many rarely seen items tie, which the evaluator's tie
    rule handles (ties="avg" gives them half credit each, "pess" none).
    """

    def __init__(self, dataset: "CrossDomainDataset") -> None:
        counts = np.asarray(dataset.item_counts())
        items = dataset.items
        if counts.shape != (items.n_tokens,):
            raise ValueError(
                f"dataset.item_counts() has shape {counts.shape}; expected ({items.n_tokens},) = items.n_tokens"
            )
        self.scores = {
            d: torch.from_numpy(counts[items.offset(d): items.offset(d) + items.n_items(d)].astype(np.float32))
            for d in (DOMAIN_X, DOMAIN_Y)
        }

    def __call__(self, history: torch.Tensor, target_domain: int) -> torch.Tensor:
        """history (B, L) -> (B, n_items(target_domain)); a broadcast view, no copy per batch."""
        row = self.scores[int(target_domain)]
        return row.unsqueeze(0).expand(history.shape[0], row.shape[0])


class RandomScorer:
    """Uniform random scores from a seeded torch.Generator: the same call sequence gives the same scores.

    RandomScorer(seed, dataset) or RandomScorer(seed, dataset.items); a Scorer is told only the target
    domain, so the domain sizes come from the dataset (or later through .bind(dataset)).
    """

    def __init__(self, seed: int = 0, dataset: "CrossDomainDataset | ItemSpace | None" = None) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))
        self.n_items: dict[int, int] | None = None
        if dataset is not None:
            self.bind(dataset)

    def bind(self, dataset: "CrossDomainDataset | ItemSpace") -> "RandomScorer":
        """Take the domain sizes from a dataset or ItemSpace; returns self."""
        items = dataset if isinstance(dataset, ItemSpace) else dataset.items
        self.n_items = {d: items.n_items(d) for d in (DOMAIN_X, DOMAIN_Y)}
        return self

    def __call__(self, history: torch.Tensor, target_domain: int) -> torch.Tensor:
        """history (B, L) -> uniform [0, 1) scores (B, n_items(target_domain))."""
        if self.n_items is None:
            raise RuntimeError("RandomScorer needs the domain sizes: RandomScorer(seed, dataset) or .bind(dataset)")
        return torch.rand(history.shape[0], self.n_items[int(target_domain)], generator=self.generator)
