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
    """What `encode_history` computes once per case: Encoder_c K/V per layer, key validity, last history state."""

    kv: list[KV]
    valid: torch.Tensor  # (B, L) bool
    # (B, d) Encoder_c state of the most recent history item: the query's start under model.query_init=xt_plus_last
    # (zeros with xt_injection=add, which has no history pass of its own)
    last: torch.Tensor
    h: torch.Tensor  # (B, L, d) embedded history (needed by xt_injection = add only)


class DPGDenoiser(nn.Module):
    """Encoder_c (n_c_layers causal blocks) + decoder (n_dec_layers cross-attention blocks) -> x̂_0 (Eq. 9)."""

    def __init__(
        self,
        dim: int,
        steps: int,
        n_c_layers: int,
        n_dec_layers: int,
        n_heads: int,
        dropout: float,
        use_memory: bool,
        xt_injection: str = "concat_token",
        lambda_u: float = 0.001,
        lambda_infer: str = "sample",
        attn_mode: AttnMode = "causal",
        cfg: bool = False,
        timestep: bool = True,
        query_init: str = "noise",
        self_cond: bool = False,
        out_head: bool = False,
    ) -> None:
        super().__init__()
        if query_init not in ("noise", "xt_plus_last"):
            raise ValueError(f"unknown query_init {query_init!r}; expected noise or xt_plus_last")
        if query_init == "xt_plus_last" and xt_injection != "concat_token":
            raise ValueError("query_init='xt_plus_last' needs xt_injection='concat_token'")
        self.query_init = query_init
        if xt_injection not in ("concat_token", "add"):
            raise ValueError(f"unknown xt_injection {xt_injection!r}; expected concat_token or add")
        if attn_mode != "causal" and xt_injection == "concat_token":
            raise ValueError("attn_mode='diffurec' (bidirectional) needs xt_injection='add'")
        self.xt_injection = xt_injection
        if lambda_infer not in ("sample", "mean"):
            raise ValueError(f"unknown lambda_infer {lambda_infer!r}; expected sample or mean")
        self.lambda_u = lambda_u
        self.lambda_infer = lambda_infer
        self.attn_mode = attn_mode
        self.use_memory = use_memory
        # timestep=False (model.diffusion=false, the −Diffusion control): no timestep embedding at all.
        self.time_emb = TimestepEmbedding(dim, steps) if timestep else None
        self.dom_emb = nn.Embedding(2, dim)  # tells x̂_0 which table it must land in (spec §3.5)
        nn.init.normal_(self.dom_emb.weight, std=0.02)
        self.encoder_c = CausalTransformer(dim, n_c_layers, n_heads, dropout)
        self.decoder = nn.ModuleList(
            CrossAttentionBlock(dim, n_heads, dropout, cross=use_memory) for _ in range(n_dec_layers)
        )
        self.dec_norm = nn.LayerNorm(dim)
        # out_head (diffusion.precond=edm): F = Linear(LN(q)). EDM's F must be free in scale: at high t its best
        # value E[F* | history] is far smaller than unit RMS, which a LayerNorm output alone cannot reach.
        self.out_proj = nn.Linear(dim, dim) if out_head else None
        # Classifier-free guidance: a learned null memory token (DreamRec `none_embedding`; spec §3.5).
        self.null_memory = nn.Parameter(torch.randn(dim) * 0.02) if (cfg and use_memory) else None
        # Self-conditioning (Analog Bits): W·x̃_0 added to the x_t token, i.e. [x_t; x̃_0] through one linear map.
        # Zero init: the model starts as the one without self-conditioning.
        self.self_cond_proj = nn.Linear(dim, dim, bias=False) if self_cond else None
        if self.self_cond_proj is not None:
            nn.init.zeros_(self.self_cond_proj.weight)

    # ---------------------------------------------------------------- pieces

    def encode_history(self, h: torch.Tensor, valid: torch.Tensor) -> HistoryCache:
        """h (B, L, d) embedded mixed history -> HistoryCache (one Encoder_c pass, causal)."""
        if self.xt_injection == "add":
            return HistoryCache([], valid, h.new_zeros(h.shape[0], h.shape[2]), h)
        states, kv = self.encoder_c(h, valid, self.attn_mode)
        return HistoryCache(kv, valid, states[:, -1], h)

    def condition(self, t: torch.Tensor, target_domain: torch.Tensor) -> torch.Tensor:
        """temb(t) + e_dom[d*], (B, d); e_dom[d*] alone without a timestep embedding."""
        dom = self.dom_emb(target_domain)
        return dom if self.time_emb is None else self.time_emb(t) + dom

    def query(self, cache: HistoryCache, x_t: torch.Tensor, cond: torch.Tensor,
              self_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The x_t token's input (B, d): x_t + cond [+ last history state, model.query_init] [+ W·x̃_0, self_cond]."""
        tok = x_t + cond
        if self.query_init == "xt_plus_last":
            tok = tok + cache.last
        if self_cond is not None and self.self_cond_proj is not None:
            tok = tok + self.self_cond_proj(self_cond)
        return tok

    def token_state(
        self, cache: HistoryCache, x_t: torch.Tensor, cond: torch.Tensor, generator: Optional[torch.Generator] = None,
        self_cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Encoder_c output for the x_t token (B, d); self_cond (B, d): the previous x̂_0, or None."""
        tok = self.query(cache, x_t, cond, self_cond)
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
        self_cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x̂_0 = Decoder(Encoder_c([s_c; x_t]), memory) (Eq. 9), (B, d).

        drop_memory (B,) bool: rows whose memory is replaced by the CFG null token (training, cfg_p).
        self_cond (B, d): the x̃_0 fed back (diffusion.self_cond), or None."""
        q = self.token_state(cache, x_t, self.condition(t, target_domain), generator, self_cond)
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
        if self.query_init == "xt_plus_last":
            tok = tok + self.encoder_c(h, valid, self.attn_mode)[0][:, -1]
        seq = torch.cat([h, tok[:, None, :]], 1)
        seq_valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
        states, _ = self.encoder_c(seq, seq_valid, self.attn_mode)
        kv = self.memory_kv(memory)
        return self.decode(states[:, -1], kv, memory.valid if self.use_memory else None)
