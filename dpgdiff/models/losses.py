"""Losses: L_diff (Eq. 6), domain-restricted recommendation CE L_rec (Eq. 10-12) and tri-view InfoNCE L_tri-cl (Eq. 13).

Logits are computed only against the target domain's table: rows are split by d* and each group
is multiplied by its own E_{d*} (spec §4.1, §8), so no work is spent on the other domain's items.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y


def diffusion_loss(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """L_diff = mean_batch mean_dims ||x̂_0 - x_0||² (Eq. 6, x_0-prediction; spec §3.4)."""
    return F.mse_loss(x0_hat, x0)


def domain_cross_entropy(
    heads: Sequence[torch.Tensor],
    target_local: torch.Tensor,
    target_domain: torch.Tensor,
    tables: Sequence[torch.Tensor],
    scale: float = 1.0,
    norm: str = "per_domain_mean",
    impl: str = "full",
    n_negatives: int = 1024,
    generator: Optional[torch.Generator] = None,
) -> list[torch.Tensor]:
    """CE of each head's logits s·h·E_{d*}^T against the target, summed over domains (Eq. 10-12).

    heads: H tensors (B, d) (e.g. x̂_0, ĝ_{d*}); target_local (B,) local item index within d*;
    target_domain (B,); tables: (E_x, E_y) without PAD rows, (N_d, d).
    norm: per_domain_mean -> mean over X-target rows + mean over Y-target rows (Σ_d of Eq. 10);
          global_mean -> sum over all rows / B (C2DSR's weighting by domain frequency).
    impl: full softmax over the domain, or `sampled`: the positive + `n_negatives` shared uniform
          negatives of that domain (uniform proposal: the logQ correction is a constant, so skipped;
          negatives that hit a row's positive are masked).
    Returns one scalar loss per head. The heads share one matmul per domain (stacked rows)."""
    n_heads = len(heads)
    batch = target_local.shape[0]
    totals = [heads[0].new_zeros(()) for _ in range(n_heads)]
    for domain in (DOMAIN_X, DOMAIN_Y):
        rows = (target_domain == domain).nonzero(as_tuple=True)[0]
        n = rows.numel()
        if n == 0:
            continue
        h = torch.cat([head.index_select(0, rows) for head in heads], 0)  # (H·n, d)
        tgt = target_local.index_select(0, rows)
        table = tables[domain]
        if impl == "full":
            logits = (h @ table.t()) * scale if scale != 1.0 else h @ table.t()
            labels = tgt.repeat(n_heads)
        elif impl == "sampled":
            gen_device = generator.device if generator is not None else table.device
            neg = torch.randint(0, table.shape[0], (n_negatives,), generator=generator, device=gen_device).to(table.device)
            pos_logit = (h * table.index_select(0, tgt).repeat(n_heads, 1)).sum(-1, keepdim=True)
            neg_logit = h @ table.index_select(0, neg).t()
            hit = (neg[None, :] == tgt[:, None]).repeat(n_heads, 1)
            logits = torch.cat([pos_logit, neg_logit.masked_fill(hit, float("-inf"))], 1) * scale
            labels = torch.zeros_like(tgt).repeat(n_heads)
        else:
            raise ValueError(f"unknown ce_impl {impl!r}; expected 'full' or 'sampled'")
        per_row = F.cross_entropy(logits, labels, reduction="none").view(n_heads, n)
        denom = n if norm == "per_domain_mean" else batch
        for i in range(n_heads):
            totals[i] = totals[i] + per_row[i].sum() / denom
    return totals


def info_nce(a: torch.Tensor, b: torch.Tensor, sim: str = "cos", tau: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE between two views (B, d) with 2B-2 in-batch negatives (SimCLR / CoSeRec NCELoss).

    Row i of `a` is positive with row i of `b`; all other rows of both views are negatives (Eq. 13).
    sim = cos: cosine / τ; sim = dot: raw dot product / τ (τ = 1 is the paper-literal form)."""
    z = torch.cat([a, b], 0)
    if sim == "cos":
        z = F.normalize(z, dim=-1)
    elif sim != "dot":
        raise ValueError(f"unknown cl_sim {sim!r}; expected 'cos' or 'dot'")
    n = a.shape[0]
    logits = (z @ z.t()) / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, labels)


def tri_view_cl(views: Sequence[torch.Tensor], sim: str = "cos", tau: float = 0.2) -> torch.Tensor:
    """L_tri-cl: mean symmetric InfoNCE over every pair of views, e.g. (c, d), (c, aug), (d, aug) (Eq. 13)."""
    pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
    if not pairs:
        raise ValueError("tri_view_cl needs at least two views")
    return sum(info_nce(views[i], views[j], sim, tau) for i, j in pairs) / len(pairs)
