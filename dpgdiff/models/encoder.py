"""Disentangled Encoder (Fig. 2, left): item tables E_x / E_y, shared Pos, Encoder_x / Encoder_y, fusion into g_d (Eq. 8).

Id layout (spec §1.2): 0 = PAD, X items 1..Nx, Y items Nx+1..Nx+Ny, MASK = Nx+Ny+1. E_x has Nx rows
(row j = internal id 1+j), E_y has Ny rows (row j = internal id Nx+1+j), so row j is score column j.
The mixed sequence is embedded with both tables plus one learned MASK vector and a zero PAD: no third
table (spec §2.1). s_x / s_y reuse the mixed sequence's vectors through a gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dpgdiff.data.dataset import DOMAIN_X, ItemSpace
from dpgdiff.models.layers import CausalTransformer, Dropout


# ------------------------------------------------------------------ sequence utilities


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are PAD in every row of a left-padded (B, L) batch (keeps >= 1 column).

    Exact for both position modes (positions are counted from the valid items), and saves the
    encoders' work on all-padding columns."""
    width = max(int((ids != 0).sum(1).max()), 1)
    return ids[:, ids.shape[1] - width:]


def compact_index(keep: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
    """Source columns of the kept entries, in order, left-padded with -1 to `width` (default L) columns.

    keep (B, L) bool -> (B, width) int64. When a row keeps more than `width` entries the oldest are
    dropped (the most recent stay at the right). Vectorised: one cumsum and one scatter."""
    b, l = keep.shape
    width = l if width is None else width
    rank = keep.flip(1).long().cumsum(1).flip(1)  # 1 = the last kept entry of the row
    col = width - rank
    ok = keep & (col >= 0)
    out = torch.full((b, width + 1), -1, dtype=torch.long, device=keep.device)  # column `width`: dump
    src = torch.arange(l, device=keep.device).expand(b, l)
    out.scatter_(1, torch.where(ok, col, width), torch.where(ok, src, -1))
    return out[:, :width]


def left_compact(ids: torch.Tensor, keep: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
    """Keep the entries of ids (B, L) where `keep`, in order, left-padded with PAD to `width` columns."""
    idx = compact_index(keep, width)
    return torch.where(idx >= 0, ids.gather(1, idx.clamp_min(0)), 0)


def domain_index(history: torch.Tensor, items: ItemSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of the mixed history that form s_x and s_y (compact, left-padded with -1, trimmed to the batch max).

    Gathering embeddings through these indices (instead of a second table lookup) keeps one table
    lookup per step, so the backward pass writes each table's gradient once."""
    nx = items.n_items_x
    is_x = (history >= 1) & (history <= nx)
    is_y = (history > nx) & (history <= nx + items.n_items_y)
    out = []
    for keep in (is_x, is_y):
        idx = compact_index(keep)
        out.append(trim_padding(idx + 1) - 1)  # trim all -1 columns (trim_padding trims zeros)
    return out[0], out[1]


def split_domains(history: torch.Tensor, items: ItemSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed left-padded history (B, L) -> compact left-padded (s_x, s_y), each trimmed to its batch max length.

    Keeps internal ids and time order (Alg. 1 line 2; spec §1.3). MASK (augmentation) belongs to neither."""
    ix, iy = domain_index(history, items)
    return tuple(torch.where(i >= 0, history.gather(1, i.clamp_min(0)), 0) for i in (ix, iy))


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, L, d), idx (B, W) source columns or -1 -> (B, W, d), zeros where idx < 0."""
    out = x.gather(1, idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out * (idx >= 0).unsqueeze(-1).to(x.dtype)


def positions(valid: torch.Tensor, mode: str) -> torch.Tensor:
    """Position ids (B, L), PAD = 0. recency: 1 = most recent valid item (ABXI); absolute: 1..n from the oldest."""
    v = valid.long()
    if mode == "recency":
        return v.flip(1).cumsum(1).flip(1) * v
    if mode == "absolute":
        return v.cumsum(1) * v
    raise ValueError(f"unknown position mode {mode!r}; expected 'recency' or 'absolute'")


# ------------------------------------------------------------------ embeddings


class ItemEmbedding(nn.Module):
    """E_x, E_y (N(0, 1), tied to scoring; spec §2.1), a MASK vector, the shared Pos table and embedding dropout.

    E_x is (Nx, d) and E_y is (Ny, d): row j = local item j = score column j. PAD embeds as zeros."""

    def __init__(
        self, items: ItemSpace, dim: int, max_len: int, position: Optional[str], dropout: float, init_std: float = 1.0,
        item_bias: bool = False,
    ) -> None:
        super().__init__()
        self.items = items
        self.max_len = max_len
        self.position = position  # None: no positional embedding (faithful DiffuRec)
        # Default N(0, 1) as nn.Embedding: unit-variance x_0 matches unit-variance DDPM noise (spec §2.1).
        self.item_x = nn.Parameter(torch.randn(items.n_items_x, dim) * init_std)
        self.item_y = nn.Parameter(torch.randn(items.n_items_y, dim) * init_std)
        self.mask_token = nn.Parameter(torch.randn(dim) * init_std)
        # model.item_bias: b_x (Nx,), b_y (Ny,); zero here, build_model sets the popularity prior
        self.bias_x = nn.Parameter(torch.zeros(items.n_items_x)) if item_bias else None
        self.bias_y = nn.Parameter(torch.zeros(items.n_items_y)) if item_bias else None
        self.pos = nn.Embedding(max_len + 1, dim, padding_idx=0) if position else None
        if self.pos is not None:
            # Same scale as the items (nanoGPT inits wte and wpe alike): with PyTorch's N(0, 1) default,
            # small item tables drown in the position signal and every user looks alike at the start.
            with torch.no_grad():
                self.pos.weight.normal_(0.0, init_std)
                self.pos.weight[0].zero_()
        self.drop = Dropout(dropout)

    def table(self, domain: int) -> torch.Tensor:
        """E_d, (n_items(domain), d); column j of the scores = local item j."""
        return self.item_x if domain == DOMAIN_X else self.item_y

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        """b_d (n_items(domain),) of model.item_bias, or None without it."""
        return self.bias_x if domain == DOMAIN_X else self.bias_y

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Raw item vectors of internal ids of either domain (..., d); PAD -> 0, MASK -> the mask vector.

        Call it once per step on all ids needed (history, augmented view, targets): each call adds a
        table-sized gradient in the backward pass."""
        nx, ny = self.items.n_items_x, self.items.n_items_y
        is_x = (ids >= 1) & (ids <= nx)
        is_y = (ids > nx) & (ids <= nx + ny)
        vx = F.embedding((ids - 1).clamp(0, nx - 1), self.item_x)
        vy = F.embedding((ids - 1 - nx).clamp(0, ny - 1), self.item_y)
        out = torch.where(is_x.unsqueeze(-1), vx, torch.where(is_y.unsqueeze(-1), vy, 0.0))
        is_mask = (ids == self.items.mask).unsqueeze(-1).to(out.dtype)
        return out + is_mask * self.mask_token  # no data-dependent branch: no device sync

    def with_positions(self, raw: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """h = Emb(s) + Pos(s), then dropout (paper §Disentangled Embedding Layer); raw (B, L, d), valid (B, L)."""
        if raw.shape[1] > self.max_len:
            raise ValueError(
                f"history has {raw.shape[1]} columns but the model was built for max_len={self.max_len}"
            )
        if self.pos is not None:
            raw = raw + self.pos(positions(valid, self.position))
        return self.drop(raw)

    def sequence(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) -> (h (B, L, d), valid (B, L)): lookup + Pos + dropout."""
        valid = ids != 0
        return self.with_positions(self.lookup(ids), valid), valid


# ------------------------------------------------------------------ Encoder_x / Encoder_y and fusion


class DomainEncoder(nn.Module):
    """Encoder_x or Encoder_y: causal pre-LN blocks, pooling, then MLP projection + LN (Eq. 8; spec §2.2)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, dropout: float, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.transformer = CausalTransformer(dim, n_layers, n_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), Dropout(dropout), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.null = nn.Parameter(torch.randn(dim) * 0.02)  # ĝ of an empty subsequence (spec §1.4)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, L, d), valid (B, L) -> (ĝ (B, d), per-position states H (B, L, d))."""
        states, _ = self.transformer(h, valid)
        if self.pool == "last":
            pooled = states[:, -1]  # left padding: the most recent item is at -1
        else:
            w = valid.unsqueeze(-1).to(states.dtype)
            pooled = (states * w).sum(1) / w.sum(1).clamp_min(1.0)
        g = self.norm(self.mlp(pooled))
        g = torch.where(valid.any(1, keepdim=True), g, self.null.to(g.dtype))
        return g, states


@dataclass
class Guidance:
    """Outputs of the Disentangled Encoder for one batch (all (B, d) unless noted)."""

    g_x: torch.Tensor
    g_y: torch.Tensor
    g_d: torch.Tensor  # fused + target-domain embedding
    h_x: torch.Tensor  # (B, Lx, d) per-position states of Encoder_x (for guidance_memory = seq)
    h_y: torch.Tensor
    valid_x: torch.Tensor  # (B, Lx) bool
    valid_y: torch.Tensor

    def domain(self, target_domain: torch.Tensor) -> torch.Tensor:
        """ĝ_{d*} per row: ĝ_x where the target domain is X, else ĝ_y (Eq. 12, Eq. 15)."""
        return torch.where((target_domain == DOMAIN_X).unsqueeze(-1), self.g_x, self.g_y)


class DisentangledEncoder(nn.Module):
    """Encoder_x + Encoder_y over s_x, s_y and the fusion of ĝ_x, ĝ_y into g_d (Eq. 8; spec §2.2-2.3)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, dropout: float, pool: str, fusion: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.enc_x = DomainEncoder(dim, n_layers, n_heads, dropout, pool)
        self.enc_y = DomainEncoder(dim, n_layers, n_heads, dropout, pool)
        if fusion == "concat":
            self.fuse = nn.Linear(2 * dim, dim)
            self.fuse_norm = nn.LayerNorm(dim)
        elif fusion == "gate":
            self.gate = nn.Linear(2 * dim, dim)
        elif fusion != "sum":
            raise ValueError(f"unknown fusion {fusion!r}; expected concat, gate or sum")
        self.dom_emb = nn.Embedding(2, dim)  # target-domain conditioning of g_d (spec §2.3)
        nn.init.normal_(self.dom_emb.weight, std=0.02)

    def forward(self, emb: ItemEmbedding, history: torch.Tensor, raw: torch.Tensor, target_domain: torch.Tensor) -> Guidance:
        """history (B, L) mixed ids, raw (B, L, d) their item vectors (emb.lookup), target_domain (B,) -> Guidance.

        s_x, s_y (Alg. 1 line 2) are gathered from the mixed history's vectors, not looked up again."""
        ix, iy = domain_index(history, emb.items)
        valid_x, valid_y = ix >= 0, iy >= 0
        h_x = emb.with_positions(gather_positions(raw, ix), valid_x)
        h_y = emb.with_positions(gather_positions(raw, iy), valid_y)
        g_x, states_x = self.enc_x(h_x, valid_x)
        g_y, states_y = self.enc_y(h_y, valid_y)
        if self.fusion == "concat":
            g = self.fuse_norm(self.fuse(torch.cat([g_x, g_y], -1)))
        elif self.fusion == "gate":
            a = torch.sigmoid(self.gate(torch.cat([g_x, g_y], -1)))
            g = a * g_x + (1 - a) * g_y
        else:
            g = g_x + g_y
        g_d = g + self.dom_emb(target_domain)
        return Guidance(g_x, g_y, g_d, states_x, states_y, valid_x, valid_y)
