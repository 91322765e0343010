"""DiffuRec baseline (spec §7.2): single-sequence diffusion over the mixed history s_c, λ-additive x_t injection.

WHUIR/DiffuRec's `Att_Diffuse_model` + `DiffuRec` + `Diffu_xstart` (src/model.py,
src/diffurec.py) on the cross-domain data with the joint item table E = [PAD; E_x; E_y]:
    h     = LN(Dropout(E[s_c]))                          no positions; PAD is a learned row of E
    x_0   = E[target]                                    raw row: no dropout, no LN
    x_t   = sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·ε              t ~ U{0..T-1}
    x̂_0  = LN(Dropout(Transformer(h + λ·(x_t + temb(t)))))[:, -1],   λ ~ N(λ_u, λ_u²) elementwise
    loss  = CE(x̂_0·E^T, target) over every row of E (both domains, and PAD as DiffuRec's table has it)
The Transformer is model.n_c_layers blocks with DiffuRec's bidirectional attention and its
padding-query-row mask (`layers.self_attention_mask(mode="diffurec")`). λ is drawn at inference too
(model.lambda_infer = sample). Test: x_T ~ N(0, I), then the reverse chain (DiffuRec: DDPM over all T
steps, configs/diffurec.yaml); scores x̂_0·E_{d*}^T, so the evaluator ranks d*'s items only.
Histories are left-padded to max_len as in DiffuRec: padding keys are visible to the attention, so
a row's output must not depend on how wide its batch is.
Not reproduced (block internals shared with every model here, `layers.SelfAttentionBlock`): DiffuRec's
dropout on each block's output and inside the FFN (ours: on the FFN output), its fixed 4 heads
(ours: model.n_heads; configs/diffurec.yaml sets 4), xavier init, LN eps 1e-12 inside the blocks.

DiffuRec's λ-injection inside the DPG-Diff harness (causal mask, positions, e_dom, decoder, CE over d*'s items
plus λ_diff·L_diff) is DPG-Diff with model.disentangled_encoder, guidance and tri_cl off and xt_injection = add
(it was `model.diffurec_variant: harness`; such checkpoints load as that DPG-Diff).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dpgdiff.config import Config
from dpgdiff.data.dataset import ItemSpace
from dpgdiff.models.base import Recommender
from dpgdiff.models.denoiser import inject_additive
from dpgdiff.models.diffusion import NoiseSchedule, randn_like, reverse_chain
from dpgdiff.models.layers import Dropout, SelfAttentionBlock, TimestepEmbedding, self_attention_mask

DIFFUREC_LN_EPS = 1e-12  # DiffuRec's TF-style LayerNorm (src/model.py, src/diffurec.py)


class DiffuRecDenoiser(nn.Module):
    """DiffuRec `Diffu_xstart`: (h, x_t, t) -> x̂_0 = LN(Dropout(Transformer(h + λ·(x_t + temb(t)))))[:, -1]."""

    def __init__(self, dim: int, steps: int, n_layers: int, n_heads: int, dropout: float,
                 lambda_u: float, lambda_infer: str) -> None:
        super().__init__()
        if lambda_infer not in ("sample", "mean"):
            raise ValueError(f"unknown lambda_infer {lambda_infer!r}; expected sample or mean")
        self.lambda_u = lambda_u
        self.lambda_infer = lambda_infer
        self.time_emb = TimestepEmbedding(dim, steps)  # sinusoid(t·1000/T) -> Linear -> SiLU -> Linear
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, n_heads, dropout) for _ in range(n_layers))
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=DIFFUREC_LN_EPS)  # `norm_diffu_rep`

    def forward(self, h: torch.Tensor, valid: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """h (B, L, d) embedded history, valid (B, L) bool, x_t (B, d), t (B,) int -> x̂_0 (B, d)."""
        sample = self.training or self.lambda_infer == "sample"
        z = inject_additive(h, x_t + self.time_emb(t), self.lambda_u, sample, generator)
        mask = self_attention_mask(valid, "diffurec")
        for block in self.blocks:
            z, _ = block(z, mask)
        return self.norm(self.drop(z))[:, -1]


class DiffuRec(Recommender):
    """DiffuRec (module docstring) behind the Recommender interface (loss / score)."""

    def __init__(self, config: Config, items: ItemSpace, max_len: int) -> None:
        super().__init__()
        m, dc = config.model, config.diffusion
        self.config = config
        self.items = items
        self.max_len = max_len
        self.scale = self.logit_scale(m.dim, m.logit_scale)
        # Row = internal id: 0 = PAD (learned, as DiffuRec's nn.Embedding without padding_idx), then X, then Y.
        self.item = nn.Embedding(1 + items.n_items_x + items.n_items_y, m.dim)
        nn.init.normal_(self.item.weight, std=m.item_init_std)
        # model.item_bias: b (1 + Nx + Ny,), row = internal id like self.item; zero here, see build_model
        self.item_bias = nn.Parameter(torch.zeros(self.item.num_embeddings)) if m.item_bias != "none" else None
        self.emb_drop = Dropout(m.emb_dropout)
        self.emb_norm = nn.LayerNorm(m.dim, eps=DIFFUREC_LN_EPS)
        self.denoiser = DiffuRecDenoiser(m.dim, dc.steps, m.n_c_layers, m.n_heads, m.dropout,
                                         m.lambda_u, m.lambda_infer)
        self.schedule = NoiseSchedule(dc.steps, dc.schedule, dc.beta_scale, dc.terminal_snr, dc.ddpm_variance)

    def table(self, domain: int) -> torch.Tensor:
        """E_d (n_items(domain), d): the joint table's rows of that domain; row j = local item j."""
        return self.domain_rows(self.item.weight, domain)

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        """b_d (n_items(domain),) of model.item_bias, the rows of `table(domain)`; None without it."""
        return None if self.item_bias is None else self.domain_rows(self.item_bias, domain)

    def embed(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) left-padded ids -> (h = LN(Dropout(E[s])) (B, max_len, d), valid (B, max_len)).

        Padded on the left to max_len: DiffuRec's attention sees padding keys, so the width matters."""
        width = history.shape[1]
        if width > self.max_len:
            raise ValueError(f"history has {width} columns but the model was built for max_len={self.max_len}")
        if bool(((history < 0) | (history > self.items.n_items_x + self.items.n_items_y)).any()):
            raise ValueError("DiffuRec histories hold PAD (0) and item ids only (no MASK: it has no augmentations)")
        history = F.pad(history, (self.max_len - width, 0))
        return self.emb_norm(self.emb_drop(self.item(history))), history != 0

    def loss(self, history, target, target_domain, generator: Optional[torch.Generator] = None):
        """DiffuRec's training objective (`loss_diffu_ce`): CE of x̂_0·E^T over the whole joint table."""
        self.target_local(target, target_domain.long())  # clear error for a target outside its domain
        h, valid = self.embed(history)
        x0 = self.item(target)
        t = self.schedule.sample_timesteps(target.shape[0], target.device, generator)
        x_t = self.schedule.add_noise(x0, randn_like(x0, generator), t)  # Eq. 3-4 (q_sample)
        x0_hat = self.denoiser(h, valid, x_t, t, generator)
        logits = self.item_scores(x0_hat, self.item.weight, self.scale, self.item_bias)  # (B, 1 + Nx + Ny)
        ce = F.cross_entropy(logits, target)
        return {"total": ce, "rec": ce.detach()}

    def diffused_x0(self, target: torch.Tensor) -> torch.Tensor:
        """x_0 = E[target] (B, d), the vector the forward process noises."""
        return self.item(target)

    @torch.no_grad()
    def predict_x0(self, history, target_domain, x_t, t) -> tuple[torch.Tensor, None]:
        """One denoiser call -> (x̂_0 (B, d), None: no guidance term), for `python -m dpgdiff diagnose`."""
        h, valid = self.embed(history)
        return self.denoiser(h, valid, x_t, t), None

    @torch.no_grad()
    def score(self, history, target_domain: int, *, sampler=None, infer_steps=None, generator=None):
        """(B, n_items(d*)) = s·x̂_0·E_{d*}^T, x̂_0 from the reverse chain started at x_T ~ N(0, I).

        sampler / infer_steps default to diffusion.sampler / infer_steps (DiffuRec: DDPM over all T)."""
        dc = self.config.diffusion
        h, valid = self.embed(history)
        b, device = h.shape[0], h.device

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
            return self.denoiser(h, valid, x, torch.full((b,), t, device=device), generator)

        x0_hat = reverse_chain(self.schedule, denoise, h.new_empty(b, h.shape[2]),
                               infer_steps if infer_steps is not None else dc.infer_steps, sampler or dc.sampler,
                               generator)
        d = int(target_domain)
        return self.item_scores(x0_hat, self.table(d), self.scale, self.bias(d))
