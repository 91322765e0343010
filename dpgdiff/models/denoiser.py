"""DPG Denoiser f_θ(x_t, t, s_c, memory) -> x̂_0: causal Encoder_c + cross-attention Decoder (Eq. 9; spec §3.5).

Encoder_c reads the mixed history with the noisy target x_t appended as one extra last token
(xt_injection = concat_token). Because Encoder_c is causal, the history's per-layer K/V do not depend
on x_t or t: `encode_history` runs once per case and every reverse step is one token through
Encoder_c (`CausalTransformer.extend`) plus the decoder over the precomputed memory K/V (spec §8).
xt_injection = add is the DiffuRec alternative (λ·(x_t + temb + e_dom) added to every history
position, `inject_additive`), which cannot be cached: each step re-runs the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from dpgdiff.config import Config
from dpgdiff.models.diffusion import randn_like
from dpgdiff.models.layers import KV, AttnMode, CausalTransformer, CrossAttentionBlock, TimestepEmbedding


def inject_additive(
    h: torch.Tensor, z: torch.Tensor, lambda_u: float, sample: bool, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """DiffuRec's λ-injection (`Diffu_xstart.forward`): h + λ·z at every position -> (B, L, d).

    h (B, L, d) embedded history; z (B, d) = x_t + temb(t) (DiffuRec adds the time embedding to x_t
    *before* scaling, so λ scales both). λ ~ N(λ_u, λ_u²) elementwise over (B, L, d) when `sample`
    (DiffuRec draws it on every call, training and inference), else the constant λ_u."""
    lam = lambda_u + lambda_u * randn_like(h, generator) if sample else lambda_u
    return h + lam * z[:, None, :]


@dataclass
class Memory:
    """Guidance memory for the decoder's cross-attention: tokens (B, M, d) and key validity (B, M) or None."""

    tokens: torch.Tensor
    valid: Optional[torch.Tensor] = None


@dataclass
class HistoryCache:
    """What `encode_history` computes once per case: Encoder_c K/V per layer and key validity."""

    kv: list[KV]
    valid: torch.Tensor  # (B, L) bool
    h: torch.Tensor  # (B, L, d) embedded history (needed by xt_injection = add only)


class DPGDenoiser(nn.Module):
    """Encoder_c (n_c_layers causal blocks) + decoder (n_dec_layers cross-attention blocks) -> x̂_0 (Eq. 9)."""

    # Causal throughout: the history's K/V then do not depend on x_t (encode_history runs once per case).
    attn_mode: AttnMode = "causal"

    def __init__(self, config: Config, use_memory: bool) -> None:
        """The DPG-Diff `config` sizes it (model.dim, n_c_layers, n_dec_layers, n_heads, dropout, xt_injection with
        lambda_u / lambda_infer, diffusion.steps); use_memory: a guidance memory to cross-attend to (the encoder on).
        model.diffusion=false (the −Diffusion control) builds no timestep embedding; diffusion.precond=edm an output
        layer; diffusion.cfg_p > 0 with a memory the classifier-free-guidance null token."""
        super().__init__()
        m, dc = config.model, config.diffusion
        dim, n_heads, dropout = m.dim, m.n_heads, m.dropout
        if m.xt_injection not in ("concat_token", "add"):
            raise ValueError(f"unknown xt_injection {m.xt_injection!r}; expected concat_token or add")
        self.xt_injection = m.xt_injection
        if m.lambda_infer not in ("sample", "mean"):
            raise ValueError(f"unknown lambda_infer {m.lambda_infer!r}; expected sample or mean")
        self.lambda_u = m.lambda_u
        self.lambda_infer = m.lambda_infer
        self.use_memory = use_memory
        self.time_emb = TimestepEmbedding(dim, dc.steps) if m.diffusion else None
        self.dom_emb = nn.Embedding(2, dim)  # tells x̂_0 which table it must land in (spec §3.5)
        nn.init.normal_(self.dom_emb.weight, std=0.02)
        self.encoder_c = CausalTransformer(dim, m.n_c_layers, n_heads, dropout)
        self.decoder = nn.ModuleList(
            CrossAttentionBlock(dim, n_heads, dropout, cross=use_memory) for _ in range(m.n_dec_layers)
        )
        self.dec_norm = nn.LayerNorm(dim)
        # out_head (diffusion.precond=edm): F = Linear(LN(q)). EDM's F must be free in scale: at high t its best
        # value E[F* | history] is far smaller than unit RMS, which a LayerNorm output alone cannot reach.
        self.out_proj = nn.Linear(dim, dim) if (dc.precond == "edm" and m.diffusion) else None
        # Classifier-free guidance: a learned null memory token (DreamRec `none_embedding`; spec §3.5).
        self.null_memory = nn.Parameter(torch.randn(dim) * 0.02) if (dc.cfg_p > 0 and use_memory) else None

    # ---------------------------------------------------------------- pieces

    def encode_history(self, h: torch.Tensor, valid: torch.Tensor) -> HistoryCache:
        """h (B, L, d) embedded mixed history -> HistoryCache (one Encoder_c pass, causal)."""
        if self.xt_injection == "add":
            return HistoryCache([], valid, h)
        _, kv = self.encoder_c(h, valid, self.attn_mode)
        return HistoryCache(kv, valid, h)

    def condition(self, t: torch.Tensor, target_domain: torch.Tensor) -> torch.Tensor:
        """temb(t) + e_dom[d*], (B, d); e_dom[d*] alone without a timestep embedding."""
        dom = self.dom_emb(target_domain)
        return dom if self.time_emb is None else self.time_emb(t) + dom

    def token_state(
        self, cache: HistoryCache, x_t: torch.Tensor, cond: torch.Tensor, generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Encoder_c output for the x_t token (B, d), whose input is x_t + cond."""
        tok = x_t + cond
        if self.xt_injection == "concat_token":
            return self.encoder_c.extend(tok, cache.kv, cache.valid)
        # DiffuRec: h + λ·(x_t + temb) at every position; e_dom (in `cond`) rides with temb.
        sample = self.training or self.lambda_infer == "sample"
        z = inject_additive(cache.h, tok, self.lambda_u, sample, generator)
        states, _ = self.encoder_c(z, cache.valid, self.attn_mode)
        return states[:, -1]

    def memory_kv(self, memory: Optional[Memory]) -> Optional[list[KV]]:
        """Per-decoder-layer K/V of the memory, computed once per case (None without memory)."""
        if not self.use_memory:
            return None
        return [block.memory_kv(memory.tokens) for block in self.decoder]

    def null_kv(self, batch: int) -> list[KV]:
        """K/V of the classifier-free-guidance null memory (one token)."""
        tokens = self.null_memory.expand(batch, 1, -1)
        return [block.memory_kv(tokens) for block in self.decoder]

    def decode(self, q: torch.Tensor, kv: Optional[list[KV]], valid: Optional[torch.Tensor]) -> torch.Tensor:
        """Decoder: cross-attend the x_t-token state to the guidance memory -> x̂_0 = LN(q) (B, d) [then out_proj]."""
        for i, block in enumerate(self.decoder):
            q = block(q, None if kv is None else kv[i], valid)
        out = self.dec_norm(q)
        return out if self.out_proj is None else self.out_proj(out)

    # ---------------------------------------------------------------- training forward

    def forward(
        self,
        cache: HistoryCache,
        x_t: torch.Tensor,
        t: torch.Tensor,
        target_domain: torch.Tensor,
        memory: Optional[Memory],
        drop_memory: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """x̂_0 = Decoder(Encoder_c([s_c; x_t]), memory) (Eq. 9), (B, d).

        drop_memory (B,) bool: rows whose memory is replaced by the CFG null token (training, cfg_p)."""
        q = self.token_state(cache, x_t, self.condition(t, target_domain), generator)
        valid = None
        if self.use_memory:
            tokens, valid = memory.tokens, memory.valid
            if drop_memory is not None and self.null_memory is not None:
                # M copies of the null token attend exactly like one null token.
                tokens = torch.where(drop_memory[:, None, None], self.null_memory.to(tokens.dtype), tokens)
                if valid is not None:
                    valid = valid | drop_memory[:, None]
            kv = [block.memory_kv(tokens) for block in self.decoder]
        else:
            kv = None
        return self.decode(q, kv, valid)

    def reference_forward(
        self, h: torch.Tensor, valid: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
        target_domain: torch.Tensor, memory: Optional[Memory],
    ) -> torch.Tensor:
        """Uncached x̂_0: one causal pass over the concatenated [history; x_t] tokens (for tests)."""
        tok = x_t + self.condition(t, target_domain)
        seq = torch.cat([h, tok[:, None, :]], 1)
        seq_valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
        states, _ = self.encoder_c(seq, seq_valid, self.attn_mode)
        kv = self.memory_kv(memory)
        return self.decode(states[:, -1], kv, memory.valid if self.use_memory else None)
