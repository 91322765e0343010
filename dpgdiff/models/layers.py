"""Shared building blocks: pre-LN self-/cross-attention blocks with K/V caching, timestep embedding.

Every encoder of DPG-Diff (Encoder_x, Encoder_y, Encoder_c, the decoder) and of the baselines
(SASRec, DiffuRec) is made of these blocks, so there is one attention implementation.
Shapes: B = batch, L = sequence length, d = model dim, h = heads, dh = d / h.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]  # (k, v), each (B, h, L, dh)
AttnMode = Literal["causal", "diffurec"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) float timesteps -> (B, dim) [cos | sin] features (DDPM / DiffuRec `timestep_embedding`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """t -> sinusoidal(t * 1000 / T) -> Linear(d, 4d) -> SiLU -> Linear(4d, d) (spec §3.3, §3.5)."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.dim = dim
        self.rescale = 1000.0 / steps  # DiffuRec rescale_timesteps: the embedding sees t on a 0..1000 scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t.float() * self.rescale, self.dim))


# ------------------------------------------------------------------ dropout


def dropout_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Bool (shape) mask, each entry kept (True) with probability 1 - p, independently (up to 2^-16 in p).

    Four entries per 64-bit draw of the global generator: on CPU, `bernoulli_` draws one random number per
    entry, and that made dropout about a tenth of a DPG-Diff training step (BENCHMARKS.md, issue 9)."""
    n = math.prod(shape)
    threshold = round((1.0 - p) * 65536) - 32768  # int16 r < threshold with probability (1 - p)
    if threshold > 32767:  # p < 2^-17 (the comparison must stay within int16)
        return torch.ones(shape, dtype=torch.bool, device=device)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, 2**63 - 1)
    return bits.view(torch.int16)[:n].view(shape) < threshold


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout(x, p, training): zero each entry with probability p, scale the rest by 1 / (1 - p).

    On CPU the mask comes from `dropout_keep_mask`; elsewhere this is F.dropout (fused on GPUs)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    return x * torch.where(dropout_keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p), 0.0).to(x.dtype)


class Dropout(nn.Module):
    """nn.Dropout through `dropout` (same semantics, a cheaper mask on CPU)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability {p} is not in [0, 1]")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], p: float,
              training: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh) + mask) v with dropout p on the attention weights (as F.scaled_dot_product_attention).

    q (B, h, Lq, dh), k / v (B, h, Lk, dh), mask bool (True = attend) or additive float, broadcastable to
    (B, h, Lq, Lk). Without dropout this is SDPA itself. With dropout on CPU, SDPA falls back to the same
    unfused math with a `bernoulli_` mask; here the mask is `dropout_keep_mask`'s."""
    if not training or p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if training else 0.0)
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return dropout(torch.softmax(scores, dim=-1), p, True) @ v


# ------------------------------------------------------------------ blocks


class FeedForward(nn.Module):
    """Position-wise FFN d -> width·d -> d with GELU (width 4: DiffuRec `PositionwiseFeedForward`; 1: C2DSR's
    d-wide FFN), dropout on the output.

    Dropout only on the d-wide output, as nanoGPT's MLP: a second dropout on the 4d hidden layer
    was the largest non-matmul cost of a CPU training step (random masks over B·L·4d values)."""

    def __init__(self, dim: int, dropout: float, width: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, width * dim)
        self.fc2 = nn.Linear(width * dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, h, L, dh)."""
    b, l, d = x.shape
    return x.view(b, l, n_heads, d // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, h, L, dh) -> (B, L, d)."""
    b, h, l, dh = x.shape
    return x.transpose(1, 2).reshape(b, l, h * dh)


def self_attention_mask(valid: torch.Tensor, mode: AttnMode = "causal") -> torch.Tensor:
    """Mask for SDPA over one sequence, (B, 1, L, L).

    causal: bool, query i sees keys j <= i that are not padding. The diagonal is always allowed, so
    padding query rows (whose outputs are never read) do not produce NaN.
    diffurec: DiffuRec's quirk (spec §10): bidirectional, padding *query rows* get -1e9 everywhere
    (uniform attention) and padding keys stay visible. Float additive mask.
    """
    b, l = valid.shape
    if mode == "causal":
        eye = torch.eye(l, dtype=torch.bool, device=valid.device)
        causal = torch.ones(l, l, dtype=torch.bool, device=valid.device).tril()
        return (causal & (valid[:, None, :] | eye))[:, None]
    if mode == "diffurec":
        neg = torch.zeros(b, 1, l, l, device=valid.device)
        return neg.masked_fill(~valid[:, None, :, None], -1e9)
    raise ValueError(f"unknown attention mode {mode!r}; expected 'causal' or 'diffurec'")


class SelfAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + SA(LN(x)), then x + FFN(LN(x)) (spec §2.2); returns its K/V for caching."""

    def __init__(self, dim: int, n_heads: int, dropout: float, ffn_width: int = 4) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout, ffn_width)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: Optional[KV] = None) -> tuple[torch.Tensor, KV]:
        """x (B, L, d); mask broadcastable to (B, 1, L, P + L); past: cached (k, v) of P earlier tokens.

        Returns the new states (B, L, d) and this call's own (k, v) (without `past`)."""
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (_heads(z, self.n_heads) for z in (q, k, v))
        k_all, v_all = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        a = attention(q, k_all, v_all, mask, self.dropout, self.training)
        x = x + self.drop(self.proj(_merge(a)))
        x = x + self.ffn(self.ln2(x))
        return x, (k, v)


class CausalTransformer(nn.Module):
    """A stack of SelfAttentionBlocks + final LN, with a cached one-token `extend` for inference (spec §8)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, dropout: float, ffn_width: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, n_heads, dropout, ffn_width) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, valid: torch.Tensor, mode: AttnMode = "causal") -> tuple[torch.Tensor, list[KV]]:
        """h (B, L, d) embedded sequence, valid (B, L) bool -> (states (B, L, d) after final LN, per-layer K/V)."""
        mask = self_attention_mask(valid, mode)
        cache = []
        for block in self.blocks:
            h, kv = block(h, mask, None)
            cache.append(kv)
        return self.norm(h), cache

    def extend(self, tok: torch.Tensor, cache: list[KV], valid: torch.Tensor) -> torch.Tensor:
        """One new last token (B, d) attending to the cached history (causal) and itself -> its state (B, d).

        Exactly equal to running `forward` over [history; tok] with a causal mask and reading the last row,
        because with causal attention the history states never depend on the new token."""
        mask = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)[:, None, None, :]  # (B, 1, 1, L+1)
        x = tok[:, None, :]
        for block, kv in zip(self.blocks, cache):
            x, _ = block(x, mask, kv)
        return self.norm(x[:, 0])


class CrossAttentionBlock(nn.Module):
    """Pre-LN decoder block: q + CA(LN(q), LN(memory)), then q + FFN(LN(q)) (Eq. 9; spec §3.5).

    With `cross=False` only the FFN half is built (the "Diff" ablation has no guidance memory)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, cross: bool = True) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.cross = cross
        if cross:
            self.ln_q = nn.LayerNorm(dim)
            self.ln_kv = nn.LayerNorm(dim)  # memory tokens come from different heads (g_d, ĝ_x, H_x, ...)
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
            self.proj = nn.Linear(dim, dim)
            self.drop = Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout)

    def memory_kv(self, memory: torch.Tensor) -> KV:
        """memory (B, M, d) -> (k, v) each (B, h, M, dh); computed once per case at inference."""
        k, v = self.kv(self.ln_kv(memory)).chunk(2, dim=-1)
        return _heads(k, self.n_heads), _heads(v, self.n_heads)

    def forward(self, x: torch.Tensor, kv: Optional[KV], key_valid: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, d) query state; kv from `memory_kv`; key_valid (B, M) bool or None (all valid)."""
        if self.cross:
            q = _heads(self.q(self.ln_q(x))[:, None, :], self.n_heads)  # (B, h, 1, dh)
            mask = None if key_valid is None else key_valid[:, None, None, :]
            a = attention(q, kv[0], kv[1], mask, self.dropout, self.training)
            x = x + self.drop(self.proj(_merge(a)[:, 0]))
        return x + self.ffn(self.ln2(x))
