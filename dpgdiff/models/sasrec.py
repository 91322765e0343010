"""SASRec baselines (spec §7.1): SASRec-mixed (one causal transformer over s_c on E_x ∪ E_y, CE over d*'s
items only) and SASRec-single (one SASRec per domain, trained and scored on s_{d*} only)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dpgdiff.config import Config
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models.base import Recommender
from dpgdiff.models.encoder import ItemEmbedding, split_domains, trim_padding
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
        self.embedding = ItemEmbedding(items, m.dim, max_len, m.position, m.emb_dropout, m.item_init_std,
                                       m.item_bias != "none")
        self.transformer = CausalTransformer(m.dim, m.n_c_layers, m.n_heads, m.dropout)

    def represent(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) history -> (B, d) state at the last position (left padding: the most recent item)."""
        h, valid = self.embedding.sequence(trim_padding(history))
        states, _ = self.transformer(h, valid)
        return states[:, -1]

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        return self.embedding.bias(domain)

    def loss(self, history, target, target_domain, generator: Optional[torch.Generator] = None):
        """Full-softmax CE of u·E_{d*}^T, rows split by target domain (loss.ce_impl, domain_loss_norm)."""
        lc = self.config.loss
        target_domain = target_domain.long()
        local = self.target_local(target, target_domain)
        tables = (self.embedding.table(DOMAIN_X), self.embedding.table(DOMAIN_Y))
        (ce,) = domain_cross_entropy(
            [self.represent(history)], local, target_domain, tables, self.scale,
            lc.domain_loss_norm, lc.ce_impl, lc.ce_chunk_rows, self.biases(),
        )
        return {"total": ce, "rec": ce.detach()}

    @torch.no_grad()
    def score(self, history, target_domain: int, *, sampler=None, infer_steps=None, generator=None):
        """(B, n_items(d*)) = s·u·E_{d*}^T; sampler / infer_steps / generator are ignored (not a diffusion model)."""
        d = int(target_domain)
        return self.item_scores(self.represent(history), self.embedding.table(d), self.scale, self.bias(d))


class SASRecSingle(Recommender):
    """SASRec-single (spec §7.1; Table 1's per-domain SASRec): one SASRec per domain, each reading only s_{d*}.

    A case whose target is in domain d goes through domain d's tower on the compact d-subsequence of
    its history (the other domain's items are dropped) and is scored against d's items. The towers
    share no parameters, so training both in one loop equals training two single-domain SASRecs
    (with loss.domain_loss_norm = per_domain_mean each domain's loss is a mean over its own rows).
    Each tower is a `SASRec` over a one-domain id space: local item j of d is tower id 1 + j."""

    def __init__(self, config: Config, items: ItemSpace, max_len: int) -> None:
        super().__init__()
        self.config = config
        self.items = items
        self.scale = self.logit_scale(config.model.dim, config.model.logit_scale)
        # ItemSpace(n, 1): the tower's "X" table is domain d's items; its 1-row "Y" table is never used.
        self.towers = nn.ModuleList(
            SASRec(config, ItemSpace(items.n_items(d), 1), max_len) for d in (DOMAIN_X, DOMAIN_Y)
        )

    def subsequence(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """(B, L) mixed history -> (B, L_d) compact left-padded s_d in the tower's ids (1 + local index)."""
        s_d = split_domains(history, self.items)[domain]
        return torch.where(s_d > 0, s_d - (self.items.offset(domain) - 1), 0)

    def table(self, domain: int) -> torch.Tensor:
        return self.towers[domain].embedding.table(DOMAIN_X)

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        return self.towers[domain].embedding.bias(DOMAIN_X)

    def loss(self, history, target, target_domain, generator: Optional[torch.Generator] = None):
        """CE of u_d·E_d^T per domain's rows (loss.ce_impl, loss.domain_loss_norm as SASRec)."""
        lc = self.config.loss
        target_domain = target_domain.long()
        local = self.target_local(target, target_domain)
        rep = None
        for d in (DOMAIN_X, DOMAIN_Y):
            rows = (target_domain == d).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            u = self.towers[d].represent(self.subsequence(history.index_select(0, rows), d))
            rep = u.new_zeros(len(target), u.shape[1]) if rep is None else rep
            rep = rep.index_copy(0, rows, u)
        (ce,) = domain_cross_entropy(
            [rep], local, target_domain, (self.table(DOMAIN_X), self.table(DOMAIN_Y)), self.scale,
            lc.domain_loss_norm, lc.ce_impl, lc.ce_chunk_rows, self.biases(),
        )
        return {"total": ce, "rec": ce.detach()}

    @torch.no_grad()
    def score(self, history, target_domain: int, *, sampler=None, infer_steps=None, generator=None):
        """(B, n_items(d*)) = s·u_{d*}·E_{d*}^T from d*'s tower on s_{d*}; sampler etc. are ignored."""
        d = int(target_domain)
        u = self.towers[d].represent(self.subsequence(history, d))
        return self.item_scores(u, self.table(d), self.scale, self.bias(d))
