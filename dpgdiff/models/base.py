"""The Recommender interface shared by DPG-Diff and the baselines (loss for training, score for evaluation)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace


class Recommender(nn.Module):
    """Base class: `loss(history, target, target_domain, generator)` and `score(history, target_domain, ...)`.

    history (B, L) int64 left-padded internal ids; target (B,) internal ids; target_domain (B,) in {0, 1}.
    score returns (B, n_items(domain)) with column j = local item j of that domain (higher = better)."""

    items: ItemSpace

    def logit_scale(self, dim: int, mode: str) -> float:
        """s in s·h·E^T: 1, or 1/sqrt(d) for unit-variance tables at large d (spec §2.1)."""
        if mode == "one":
            return 1.0
        if mode == "inv_sqrt_d":
            return 1.0 / math.sqrt(dim)
        raise ValueError(f"unknown logit_scale {mode!r}; expected 'one' or 'inv_sqrt_d'")

    @staticmethod
    def item_scores(rep: torch.Tensor, table: torch.Tensor, scale: float,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """s·rep·E^T (+ b, model.item_bias) in float32 even under autocast: bf16 scores would tie far too
        often for ranking. rep (B, d), table (N, d), bias (N,) or None -> (B, N)."""
        with torch.autocast(device_type=rep.device.type, enabled=False):
            scores = (rep.float() @ table.float().t()) * scale
            return scores if bias is None else scores + bias.float()

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        """b_d (n_items(domain),), the per-item logit bias of model.item_bias (a view of a parameter), or None."""
        return None

    def biases(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(b_x, b_y) for domain_cross_entropy."""
        return self.bias(DOMAIN_X), self.bias(DOMAIN_Y)

    @torch.no_grad()
    def init_item_bias(self, item_counts: np.ndarray) -> None:
        """model.item_bias=popularity: b_d = log(1 + training count), centred per domain (item_counts (n_tokens,)
        by internal id, as dataset.item_counts()): the untrained model ranks each domain by popularity."""
        for domain in (DOMAIN_X, DOMAIN_Y):
            bias = self.bias(domain)
            if bias is None:
                raise ValueError("init_item_bias: the model was built without model.item_bias")
            start = self.items.offset(domain)
            prior = torch.log1p(torch.as_tensor(item_counts[start:start + self.items.n_items(domain)], dtype=torch.float64))
            bias.copy_((prior - prior.mean()).to(bias.dtype))

    def domain_rows(self, by_id: torch.Tensor, domain: int) -> torch.Tensor:
        """The rows of `domain`'s items in a tensor indexed by internal id (a joint table with a PAD row 0, or its
        bias): a view, row j = local item j."""
        start = self.items.offset(domain)
        return by_id[start:start + self.items.n_items(domain)]

    def target_local(self, target: torch.Tensor, target_domain: torch.Tensor) -> torch.Tensor:
        """Internal target ids -> local index within d*'s table; a clear error if a target is not in d*."""
        nx, ny = self.items.n_items_x, self.items.n_items_y
        is_y = target_domain == DOMAIN_Y
        local = target - 1 - nx * is_y.long()
        n = torch.where(is_y, ny, nx)
        bad = (local < 0) | (local >= n) | ((target_domain != DOMAIN_X) & ~is_y)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"target {int(target[i])} (row {i}) is not an item of target_domain {int(target_domain[i])} "
                f"(X ids 1..{nx}, Y ids {nx + 1}..{nx + ny})"
            )
        return local

    def loss(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        target_domain: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def score(
        self,
        history: torch.Tensor,
        target_domain: int,
        *,
        sampler: Optional[str] = None,
        infer_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        raise NotImplementedError
