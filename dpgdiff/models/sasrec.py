"""SASRec-mixed baseline (spec §7.1): one causal transformer over s_c on E_x ∪ E_y, CE over d*'s items only."""

from __future__ import annotations

from typing import Optional

import torch

from dpgdiff.config import Config
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models.base import Recommender
from dpgdiff.models.encoder import ItemEmbedding, trim_padding
from dpgdiff.models.layers import CausalTransformer
from dpgdiff.models.losses import domain_cross_entropy


class SASRec(Recommender):
    """Pre-LN SASRec with model.n_c_layers blocks; user vector = state of the most recent item."""

    def __init__(self, config: Config, items: ItemSpace, max_len: int) -> None:
        super().__init__()
        m = config.model
        self.config = config
        self.items = items
        self.scale = self.logit_scale(m.dim, m.logit_scale)
        self.embedding = ItemEmbedding(items, m.dim, max_len, m.position, m.emb_dropout, m.item_init_std)
        self.transformer = CausalTransformer(m.dim, m.n_c_layers, m.n_heads, m.dropout)

    def represent(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) history -> (B, d) state at the last position (left padding: the most recent item)."""
        h, valid = self.embedding.sequence(trim_padding(history))
        states, _ = self.transformer(h, valid)
        return states[:, -1]

    def loss(self, history, target, target_domain, generator: Optional[torch.Generator] = None):
        """Full-softmax (or sampled) CE of u·E_{d*}^T, rows split by target domain (loss.ce_impl, domain_loss_norm)."""
        lc = self.config.loss
        target_domain = target_domain.long()
        local = self.target_local(target, target_domain)
        tables = (self.embedding.table(DOMAIN_X), self.embedding.table(DOMAIN_Y))
        (ce,) = domain_cross_entropy(
            [self.represent(history)], local, target_domain, tables, self.scale,
            lc.domain_loss_norm, lc.ce_impl, lc.ce_negatives, generator, lc.ce_chunk_rows,
        )
        return {"total": ce, "rec": ce.detach()}

    @torch.no_grad()
    def score(self, history, target_domain: int, *, sampler=None, infer_steps=None, generator=None):
        """(B, n_items(d*)) = s·u·E_{d*}^T; sampler / infer_steps / generator are ignored (not a diffusion model)."""
        return self.item_scores(self.represent(history), self.embedding.table(int(target_domain)), self.scale)
