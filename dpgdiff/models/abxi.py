"""ABXI baseline (Bian et al., "ABXI: Invariant Interest Adaptation for Task-Guided Cross-Domain Sequential
Recommendation", WWW 2025, arXiv 2501.15118).

Written from the paper, with the official code (github.com/DiMarzioBian/ABXI: models/ABXI.py, models/encoders.py,
models/layers.py, trainer.py, main.py, demo.sh) as the reference for what the paper leaves out; no code is copied.
Domain A of the paper is X here, B is Y; s_c is the mixed history, s_x / s_y its one-domain subsequences.

Model (the paper's method section: shared encoder with domain LoRAs, invariant projector with invariant LoRAs,
task-guided alignment; equation numbers are not cited, as the full paper text was not at hand, and the formulas
below were checked against the official code instead):
    embedding   H_s = Dropout((E[s] + P[pos(s)])·valid) for s in (s_c, s_x, s_y); one item table E for both domains,
                positions counted from the most recent item (1 = last; official get_absolute_pos_idx)
    encoder     one causal multi-head self-attention layer shared by the three sequences, post-norm:
                H_s = LN(H_s + Dropout(MHA(H_s)))·valid (official MultiHeadAttention), read at the last position
    dLoRA       h_s = LN_s(h_s + Dropout(FFN(h_s)) + Dropout(h_s·A_s·B_s)), FFN a SwiGLU shared by the three,
                A_s B_s a rank-rd LoRA of each sequence (x, a, b in the official code)
    iLoRA       for target domain d: h = LN_{c→d}(h_c + Dropout(proj_i(h_c)) + Dropout(h_c·A'_d·B'_d))
                                       + LN_{d→d}(h_d + Dropout(proj_d(h_d))), rank-ri LoRAs, SwiGLU projectors
    scores      h·E_d^T / τ (+ b_d with model.item_bias), τ = abxi.temp
    loss        InfoNCE of the target against abxi.n_neg uniform items of each domain (official: 128 + 128),
                logits over τ, a mean over each target domain's rows, the two domains summed (official
                cal_rec_loss: loss_a + loss_b)
Initialisation as official models/utils/initialization.py: Linear N(0, 0.02) with zero bias, the item and position
tables truncated N(0, 0.02) in ±0.04, LoRA A ~ N(0, 0.02) and B = 0 (so a LoRA starts as 0). The SwiGLU hidden
width is 8d/3 rounded down to a multiple of 8 (680 at the official d = 256).
configs/abxi.yaml follows the official main.py and demo.sh for Food-Kitchen: d = 256, 2 heads, dropout 0.5,
τ = 0.75, 128 negatives per domain, rd = 16, ri = 64, AdamW lr 1e-4 with weight decay 5, batch 256,
ReduceLROnPlateau(0.3162, patience 30) on the validation MRR sum, a stop after more than 61 validation passes
without a gain, 500 epochs.

Task-guided alignment (official dataloader get_spe_seq): the domain-d sequence that meets a target in d
is d's subsequence of everything before the target. One example here is (history, next item), so h_d is the
last state of s_d itself, in training and at test alike.

Departures:
- Training reads one (history, target) example at a time; the official code trains every position of a sequence
  at once. train.mode=prefix gives every position of every training sequence as an example (those with >= 1 item
  of each domain before them). The official warm-up (1 epoch, LinearLR from 1e-5·lr) is not in the harness.
- The official evaluation reads the domain encoders at the last position of the mixed-length sequence, which is
  padding (and so 0) whenever the most recent item is of the other domain; here, as in its training alignment, the
  last item of s_d (a history without items of d: h_d = 0).
- Padding keys are masked out of the attention (the official mask is causal only, with zero padding vectors), and
  a negative that equals the target is masked out of its row (the official sampler leaves out every item of the
  user's sequence, future ones included).
- abxi.n_neg = 0 (not in the official code) trains with the full softmax over the target domain's items instead.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dpgdiff.config import Config
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models.base import Recommender
from dpgdiff.models.encoder import positions, split_domains, trim_padding
from dpgdiff.models.layers import Dropout, _heads, _merge, attention, self_attention_mask
from dpgdiff.models.losses import domain_cross_entropy

INIT_STD = 0.02  # official init_weights


class SwiGLU(nn.Module):
    """FFN(h) = W_3·(SiLU(W_2 h) ⊙ W_1 h), no biases (official encoders.FeedForward); d -> hidden -> d."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = int(8 * dim / 3) // 8 * 8
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(h)) * self.up(h))


class LoRA(nn.Module):
    """h -> h·A·B with A (d, r) ~ N(0, 0.02), B (r, d) = 0: a low-rank update that starts at 0."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(dim, rank) * INIT_STD)
        self.b = nn.Parameter(torch.zeros(rank, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.a) @ self.b


class PostNormAttention(nn.Module):
    """H = LN(H + Dropout(MHA(H)))·valid, causal, padding keys masked; the attention itself has no dropout."""

    def __init__(self, dim: int, n_heads: int, p: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = Dropout(p)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """h (B, L, d), valid (B, L) -> (B, L, d)."""
        q, k, v = (_heads(z, self.n_heads) for z in self.qkv(h).chunk(3, dim=-1))
        a = attention(q, k, v, self_attention_mask(valid, "causal"), 0.0, self.training)
        return self.norm(h + self.drop(self.proj(_merge(a)))) * valid.unsqueeze(-1).to(h.dtype)


class ABXI(Recommender):
    """ABXI (module docstring) behind the Recommender interface (loss / score)."""

    def __init__(self, config: Config, items: ItemSpace, max_len: int) -> None:
        super().__init__()
        m, a = config.model, config.abxi
        self.config = config
        self.items = items
        self.n_neg, self.temp = a.n_neg, a.temp
        dim = m.dim
        self.item = nn.Embedding(1 + items.n_items_x + items.n_items_y, dim)  # row = internal id; row 0 = PAD
        self.pos = nn.Embedding(max_len + 1, dim)
        # model.item_bias: b (1 + Nx + Ny,), row = internal id as self.item; zero here, see build_model
        self.item_bias = nn.Parameter(torch.zeros(self.item.num_embeddings)) if m.item_bias != "none" else None
        self.drop = Dropout(m.dropout)
        self.mha = PostNormAttention(dim, m.n_heads, m.dropout)
        self.ffn = SwiGLU(dim)
        seqs = ("c", "x", "y")
        self.dlora = nn.ModuleDict({s: LoRA(dim, a.rd) for s in seqs}) if a.rd > 0 else None
        self.norm_seq = nn.ModuleDict({s: nn.LayerNorm(dim) for s in seqs})
        self.ilora = nn.ModuleList([LoRA(dim, a.ri), LoRA(dim, a.ri)]) if a.ri > 0 else None
        self.proj_i = SwiGLU(dim) if a.proj else None
        self.proj_d = nn.ModuleList([SwiGLU(dim), SwiGLU(dim)]) if a.proj else None
        self.norm_inv = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])  # LN_{c→x}, LN_{c→y}
        self.norm_dom = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])  # LN_{x→x}, LN_{y→y}
        for module in self.modules():  # official init_weights (LoRAs keep their own)
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD)

    def table(self, domain: int) -> torch.Tensor:
        """E_d (n_items(domain), d): the rows of that domain; row j = local item j."""
        return self.domain_rows(self.item.weight, domain)

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        return None if self.item_bias is None else self.domain_rows(self.item_bias, domain)

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history (B, L) -> (h (3, B, d): the last states of s_c, s_x, s_y after the shared layer and the dLoRA
        step, in that order; present (3, B) bool: the sequence has an item)."""
        history = trim_padding(history)
        s_x, s_y = split_domains(history, self.items)
        width = history.shape[1]
        ids = torch.cat([history, F.pad(s_x, (width - s_x.shape[1], 0)), F.pad(s_y, (width - s_y.shape[1], 0))])
        valid = ids != 0
        mask = valid.unsqueeze(-1).to(self.item.weight.dtype)
        h = self.drop((self.item(ids) + self.pos(positions(valid, "recency"))) * mask)
        h = self.mha(h, valid)[:, -1].view(3, history.shape[0], -1)  # the last position only: the rest is per-row
        present = valid[:, -1].view(3, -1)
        out = []
        for i, s in enumerate(("c", "x", "y")):
            z = h[i] + self.drop(self.ffn(h[i]))
            if self.dlora is not None:
                z = z + self.drop(self.dlora[s](h[i]))
            out.append(self.norm_seq[s](z) * present[i].unsqueeze(-1).to(z.dtype))
        return torch.stack(out), present

    def represent(self, h: torch.Tensor, domain: int) -> torch.Tensor:
        """h from `encode` -> the representation for targets in `domain` (B, d): invariant + domain part."""
        h_c, h_d = h[0], h[1 + domain]
        inv = h_c
        if self.proj_i is not None:
            inv = inv + self.drop(self.proj_i(h_c))
        if self.ilora is not None:
            inv = inv + self.drop(self.ilora[domain](h_c))
        own = h_d + self.drop(self.proj_d[domain](h_d)) if self.proj_d is not None else h_d
        return self.norm_inv[domain](inv) + self.norm_dom[domain](own)

    def loss(self, history, target, target_domain, generator: Optional[torch.Generator] = None):
        """InfoNCE over the target and abxi.n_neg uniform items of each domain (module docstring), or with
        abxi.n_neg = 0 the full softmax over the target domain -> {"total", "rec"}."""
        target_domain = target_domain.long()
        local = self.target_local(target, target_domain)
        h = self.encode(history)[0]
        is_x = (target_domain == DOMAIN_X).unsqueeze(-1)
        rep = torch.where(is_x, self.represent(h, DOMAIN_X), self.represent(h, DOMAIN_Y))
        if self.n_neg == 0:
            (ce,) = domain_cross_entropy([rep], local, target_domain, (self.table(DOMAIN_X), self.table(DOMAIN_Y)),
                                         1.0 / self.temp, "per_domain_mean", "full", 256, self.biases())
            return {"total": ce, "rec": ce.detach()}
        shape = (target.shape[0], self.n_neg)
        negatives = torch.cat([torch.randint(self.items.offset(d), self.items.offset(d) + self.items.n_items(d), shape,
                                             device=target.device, generator=generator) for d in (DOMAIN_X, DOMAIN_Y)],
                              1)
        candidates = torch.cat([target.unsqueeze(1), negatives], 1)  # (B, 1 + 2·n_neg), the target first
        logits = torch.einsum("bd,bkd->bk", rep, self.item(candidates)) / self.temp
        if self.item_bias is not None:
            logits = logits + self.item_bias[candidates]
        collides = negatives == target.unsqueeze(1)  # such a negative is the target itself: left out of its row
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(collides, float("-inf"))], 1)
        per_row = -torch.log_softmax(logits, 1)[:, 0]
        total = per_row.new_zeros(())
        for d in (DOMAIN_X, DOMAIN_Y):
            rows = target_domain == d
            if bool(rows.any()):
                total = total + per_row[rows].mean()
        return {"total": total, "rec": total.detach()}

    @torch.no_grad()
    def score(self, history, target_domain: int, *, sampler=None, infer_steps=None, generator=None):
        """(B, n_items(d*)) = h·E_{d*}^T / τ (+ b_{d*}); sampler / infer_steps / generator are ignored."""
        d = int(target_domain)
        rep = self.represent(self.encode(history)[0], d)
        return self.item_scores(rep, self.table(d), 1.0 / self.temp, self.bias(d))
