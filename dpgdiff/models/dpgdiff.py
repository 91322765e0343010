"""DPG-Diff assembled (Fig. 2): Disentangled Encoder -> guided diffusion with the DPG Denoiser -> Eq. 15 scores.

`loss` is Algorithm 1 (Eq. 14: λ_diff·L_diff + λ_rec·L_rec + λ_cl·L_tri-cl); `score` is Eq. 15 with the
softmax over items (monotone, so raw scores rank). Table 3's ablations are config switches
(model.disentangled_encoder, model.guidance, model.tri_cl); a disabled component is not built.
model.diffusion=false is the `−Diffusion` control: the same network, x_t ≡ 0, no timestep embedding, no L_diff, and
(under diffusion.precond=edm) the same output head as the model's K = 1 pass from pure noise: σ_d·F (EDM at ᾱ = 0).
Kept from issue 23's levers (config_sections.py documents each): diffusion.precond (EDM), loss.rec_timestep, model.item_bias.
Issue 40's option: PreferDiff's preference loss (loss.lambda_prefer, `prefer_loss`), off by default.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from dpgdiff.config import Config, ConfigError
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models.augmentations import Augmenter
from dpgdiff.models.base import Recommender
from dpgdiff.models.denoiser import DPGDenoiser, HistoryCache, Memory
from dpgdiff.models.diffusion import EDMPreconditioning, NoiseSchedule, randn_like, reverse_chain
from dpgdiff.models.encoder import DisentangledEncoder, Guidance, ItemEmbedding, trim_padding
from dpgdiff.models.losses import (
    cosine_error, diffusion_loss, domain_cross_entropy, negative_centroids, preference_loss, tri_view_cl,
)


class DPGDiff(Recommender):
    """DPG-Diff recommender. Built by `dpgdiff.models.build_model`; `similar` = ItemCF map for the augmentations."""

    def __init__(self, config: Config, items: ItemSpace, max_len: int, similar: Optional[np.ndarray] = None) -> None:
        super().__init__()
        m, dc = config.model, config.diffusion
        self.config = config
        self.items = items
        self.dim = m.dim
        self.scale = self.logit_scale(m.dim, m.logit_scale)
        self.embedding = ItemEmbedding(
            items, m.dim, max_len, m.position, m.emb_dropout, m.item_init_std,
            m.item_bias != "none",
        )
        # DE: Encoder_x / Encoder_y + fusion (Eq. 8). Off = "Diff": no guidance at all.
        self.encoder = (
            DisentangledEncoder(m.dim, m.n_enc_layers, m.n_heads, m.dropout, m.pool, m.fusion)
            if m.disentangled_encoder else None
        )
        # G: the full guidance memory; without it the decoder sees [g_d] only (Table 3 "Diff + DE").
        if self.encoder is None:
            self.memory_mode = None
        else:
            self.memory_mode = m.guidance_memory if m.guidance else "single"
        self.use_diffusion = m.diffusion
        self.denoiser = DPGDenoiser(config, use_memory=self.memory_mode is not None)
        if dc.cfg_w > 0 and not (dc.cfg_p > 0 and self.memory_mode is not None):
            raise ConfigError(
                f"diffusion.cfg_w={dc.cfg_w} needs diffusion.cfg_p > 0 and a guidance memory "
                f"(model.disentangled_encoder=true): classifier-free guidance has no null branch otherwise"
            )
        self.schedule = NoiseSchedule(dc.steps, dc.schedule, dc.beta_scale, dc.terminal_snr, dc.ddpm_variance)
        # The control keeps the EDM head too: without it its logits start ~σ_d⁻¹ (≈17×) larger than the model's,
        # another temperature against the item bias, and the comparison would not isolate the diffusion.
        self.precond = EDMPreconditioning(self.schedule) if dc.precond == "edm" else None
        # Tri-CL: the augmentations exist only when the contrastive loss does.
        self.augmenter = Augmenter(items, config.augment, similar) if m.tri_cl else None

    # ---------------------------------------------------------------- shared pieces

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embedding.table(DOMAIN_X), self.embedding.table(DOMAIN_Y)

    def table(self, domain: int) -> torch.Tensor:
        """E_d (n_items(domain), d); column j of the scores = local item j."""
        return self.embedding.table(domain)

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        return self.embedding.bias(domain)

    def diffused_x0(self, target: torch.Tensor) -> torch.Tensor:
        """x_0 of the forward process for internal target ids (B, d): E_{d*}[target], after model.x0_norm."""
        return self.x0(self.embedding.lookup(target))

    def memory(self, guidance: Optional[Guidance]) -> Optional[Memory]:
        """Guidance memory tokens for the decoder (spec §3.5): single [g_d], tokens3 [g_d, ĝ_x, ĝ_y], seq [g_d; H_x; H_y]."""
        if self.memory_mode is None:
            return None
        g = guidance
        if self.memory_mode == "single":
            return Memory(g.g_d[:, None])
        if self.memory_mode == "tokens3":
            return Memory(torch.stack([g.g_d, g.g_x, g.g_y], 1))
        ones = g.valid_x.new_ones(g.g_d.shape[0], 1)
        return Memory(torch.cat([g.g_d[:, None], g.h_x, g.h_y], 1), torch.cat([ones, g.valid_x, g.valid_y], 1))

    def x0(self, x0: torch.Tensor) -> torch.Tensor:
        """x_0 = E_{d*}[target] (spec §3.1; given as looked-up vectors), optionally rescaled to norm sqrt(d)."""
        if self.config.model.x0_norm == "l2_sqrt_d":
            x0 = F.normalize(x0, dim=-1) * math.sqrt(self.dim)
        return x0

    def sigma_data(self, target_domain: torch.Tensor) -> Optional[torch.Tensor]:
        """σ_d (B,) of diffusion.precond=edm for each row's target domain; None without preconditioning.

        diffusion.sigma_data, else 1 under model.x0_norm=l2_sqrt_d (rows of norm sqrt(d)), else the RMS of E_{d*}
        now (no gradient): the same value in training and at inference."""
        if self.precond is None:
            return None
        dc = self.config.diffusion
        if dc.sigma_data is not None or self.config.model.x0_norm == "l2_sqrt_d":
            value = dc.sigma_data if dc.sigma_data is not None else 1.0
            return torch.full(target_domain.shape, float(value), device=target_domain.device)
        with torch.no_grad():
            rms = torch.stack([self.table(d).detach().float().pow(2).mean() for d in (DOMAIN_X, DOMAIN_Y)]).sqrt()
        return rms[target_domain.long()]

    def denoise(
        self, cache: HistoryCache, x_t: torch.Tensor, t: torch.Tensor, target_domain: torch.Tensor,
        memory: Optional[Memory], drop: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
        sigma: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x̂_0 (B, d) = f_θ(x_t, t, s_c, memory) (Eq. 9), through EDM's c_in / c_skip / c_out under
        diffusion.precond=edm (sigma = `sigma_data(target_domain)`)."""
        def network(x: torch.Tensor) -> torch.Tensor:
            return self.denoiser(cache, x, t, target_domain, memory, drop, generator)

        return self.preconditioned(network, x_t, t, sigma)

    def preconditioned(self, network, x_t: torch.Tensor, t: torch.Tensor, sigma: Optional[torch.Tensor]) -> torch.Tensor:
        """x̂_0 (B, d) from the network F: as is, EDM-wrapped at t, or for the −Diffusion control EDM's head at
        ᾱ = 0 (c_skip = 0, c_out = σ_d), which is what the model's terminal pass (K = 1, zero terminal SNR) uses."""
        if self.precond is None:
            return network(x_t)
        if not self.use_diffusion:
            return self.precond.terminal_output(network(x_t), sigma)
        return self.precond.wrap(network, x_t, t, sigma)

    # ---------------------------------------------------------------- training (Algorithm 1)

    def loss(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        target_domain: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, torch.Tensor]:
        """Eq. 14 for a batch -> {"total", "diff", "rec", "rec_c", "rec_s", "cl"[, "prefer"]}; every entry but "total"
        is detached ("prefer": PreferDiff's term, loss.lambda_prefer > 0)."""
        lc, dc = self.config.loss, self.config.diffusion
        target_domain = target_domain.long()
        target_local = self.target_local(target, target_domain)
        cl = self.augmenter is not None and lc.lambda_cl > 0
        # Augment before trimming, so Insert re-truncates to the full max_len window.
        aug = trim_padding(self.augmenter(history, generator)) if cl else history[:, :0]
        history = trim_padding(history)
        b, device = history.shape[0], history.device

        # One table lookup for everything (history, augmented view, targets): one table-sized gradient.
        n_hist = history.numel()
        raw = self.embedding.lookup(torch.cat([history.flatten(), aug.flatten(), target]))
        raw_hist = raw[:n_hist].view(*history.shape, self.dim)
        raw_aug = raw[n_hist:n_hist + aug.numel()].view(*aug.shape, self.dim)
        valid = history != 0
        h = self.embedding.with_positions(raw_hist, valid)
        guidance = self.encoder(self.embedding, history, raw_hist, target_domain) if self.encoder is not None else None
        memory = self.memory(guidance)

        if self.use_diffusion:
            x0 = self.x0(raw[n_hist + aug.numel():])
            t = self.schedule.sample_timesteps(b, device, generator)
            x_t = self.schedule.add_noise(x0, randn_like(x0, generator), t)  # Eq. 3-4
        else:  # the −Diffusion control: x_t ≡ 0 and one fixed t (no timestep embedding reads it)
            x0, t = None, torch.zeros(b, dtype=torch.long, device=device)
            x_t = h.new_zeros(b, self.dim)
        cache = self.denoiser.encode_history(h, valid)
        drop = None
        if dc.cfg_p > 0 and self.training and memory is not None:
            gen_device = generator.device if generator is not None else device
            drop = (torch.rand(b, generator=generator, device=gen_device) < dc.cfg_p).to(device)
        sigma = self.sigma_data(target_domain)
        terminal = lc.rec_timestep == "terminal" and self.use_diffusion
        prefer = lc.lambda_prefer > 0 and self.use_diffusion
        x0_hat = None
        # The sampled-t pass feeds L_diff and PreferDiff's err⁺, and the CE unless terminal.
        if not terminal or lc.lambda_diff > 0 or prefer:
            x0_hat = self.denoise(cache, x_t, t, target_domain, memory, drop, generator, sigma)  # Eq. 9
        rec_x0_hat = x0_hat
        if terminal:  # loss.rec_timestep=terminal: the CE reads x̂_0 from x_T ~ N(0, I) at t = T-1, as K = 1 does
            t_last = torch.full((b,), self.schedule.steps - 1, dtype=torch.long, device=device)
            x_last = randn_like(h.new_empty(b, self.dim), generator)
            rec_x0_hat = self.denoise(cache, x_last, t_last, target_domain, memory, drop, generator, sigma)

        out: dict[str, torch.Tensor] = {}
        total = rec_x0_hat.new_zeros(())
        if lc.lambda_diff > 0 and self.use_diffusion:
            weight = self.precond.loss_weight(t, sigma, x0) if self.precond is not None else None
            out["diff"] = diffusion_loss(x0_hat, x0, weight)  # Eq. 6
            total = total + lc.lambda_diff * out["diff"]
        if lc.lambda_rec > 0:
            out.update(self.rec_loss(rec_x0_hat, guidance, target_local, target_domain))
            total = total + lc.lambda_rec * out["rec"]
        if cl:  # Eq. 13
            views = [rec_x0_hat] + ([guidance.g_d] if guidance is not None else [])
            views.append(self.augmented_view(aug, raw_aug, x_t, t, target_domain, memory, generator, sigma))
            out["cl"] = tri_view_cl(views, lc.cl_sim, lc.cl_tau)
            total = total + lc.lambda_cl * out["cl"]
        if prefer:  # last: every term above draws and computes exactly what it does with the option off
            out["prefer"] = self.prefer_loss(x0_hat, x0, t, target, target_domain, cache, memory, drop, generator,
                                             sigma)
            total = total + lc.lambda_prefer * out["prefer"]

        result = {k: v.detach() for k, v in out.items()}
        result["total"] = total
        return result

    def prefer_loss(self, x0_hat, x0, t, target, target_domain, cache, memory, drop, generator, sigma) -> torch.Tensor:
        """PreferDiff's term (loss.lambda_prefer; models/losses.py: preference_loss): the centroid of each row's
        in-batch negatives is noised at the row's own t (fresh noise, as the official code draws it) and denoised
        from the same history and memory; the positive's error is that of x̂_0 (B, d), the pass L_diff reads."""
        lc = self.config.loss
        x0_neg, has_negative = negative_centroids(x0, target, target_domain)
        x_t_neg = self.schedule.add_noise(x0_neg, randn_like(x0_neg, generator), t)
        x0_hat_neg = self.denoise(cache, x_t_neg, t, target_domain, memory, drop, generator, sigma)
        return preference_loss(cosine_error(x0_hat, x0), cosine_error(x0_hat_neg, x0_neg), has_negative,
                               lc.prefer_gamma, lc.prefer_lambda)

    def rec_loss(self, x0_hat: torch.Tensor, guidance: Optional[Guidance], target_local: torch.Tensor,
                 target_domain: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_rec = L^c + λ_s·L^s (Eq. 10-12) -> {"rec", "rec_c"[, "rec_s"]}: the CE of x̂_0 (B, d) and, with the
        encoder, of its domain representation ĝ_{d*} (or g_d, loss.single_loss_repr) over d*'s items."""
        lc = self.config.loss
        heads, names = [x0_hat], ["rec_c"]
        if guidance is not None and lc.lambda_s > 0:
            heads.append(guidance.domain(target_domain) if lc.single_loss_repr == "domain" else guidance.g_d)
            names.append("rec_s")
        ces = domain_cross_entropy(heads, target_local, target_domain, self.tables(), self.scale,
                                   lc.domain_loss_norm, lc.ce_impl, lc.ce_chunk_rows, self.biases())
        out = dict(zip(names, ces))
        out["rec"] = out["rec_c"] + lc.lambda_s * out["rec_s"] if "rec_s" in out else out["rec_c"]
        return out

    def augmented_view(self, aug, raw_aug, x_t, t, target_domain, memory, generator, sigma=None) -> torch.Tensor:
        """h_aug = Encoder_c(s_aug) (loss.cl_aug_view: history_only | with_xt | denoiser; spec §4.2).

        aug (B, L') augmented ids, raw_aug (B, L', d) their item vectors."""
        valid = aug != 0
        h = self.embedding.with_positions(raw_aug, valid)
        mode = self.config.loss.cl_aug_view
        den = self.denoiser
        if mode == "history_only":
            states, _ = den.encoder_c(h, valid, den.attn_mode)
            return states[:, -1]
        cache = den.encode_history(h, valid)
        if mode == "with_xt":
            x_in = x_t if self.precond is None else self.precond.precondition_inputs(x_t, t, sigma)
            return den.token_state(cache, x_in, den.condition(t, target_domain), generator)
        return self.denoise(cache, x_t, t, target_domain, memory, None, generator, sigma)

    @torch.no_grad()
    def predict_x0(
        self, history: torch.Tensor, target_domain: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One denoiser call f_θ(x_t, t, s_c, memory) (Eq. 9) -> (x̂_0 (B, d), ĝ_{d*} (B, d) or None).

        For diagnostics (`python -m dpgdiff diagnose`): how x̂_0 depends on x_t at each t, on given x_t."""
        if not self.use_diffusion:
            raise ValueError("model.diffusion=false (the −Diffusion control): there is no x_t to diagnose")
        history = trim_padding(history)
        target_domain = target_domain.long()
        raw = self.embedding.lookup(history)
        valid = history != 0
        guidance = self.encoder(self.embedding, history, raw, target_domain) if self.encoder is not None else None
        cache = self.denoiser.encode_history(self.embedding.with_positions(raw, valid), valid)
        x0_hat = self.denoise(cache, x_t, t, target_domain, self.memory(guidance), sigma=self.sigma_data(target_domain))
        return x0_hat, None if guidance is None else guidance.domain(target_domain)

    # ---------------------------------------------------------------- inference (Eq. 15)

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
        """Scores (B, n_items(d*)) = s·(x̂_0 + α·ĝ_{d*})·E_{d*}^T (Eq. 15), x̂_0 from K reverse steps.

        The history encodings (Encoder_x/y, guidance memory K/V, Encoder_c K/V) are computed once; each reverse
        step (`reverse_chain`) is one token through Encoder_c plus the decoder. sampler / infer_steps default to
        diffusion.sampler / diffusion.infer_steps. model.diffusion=false: one pass with x_t = 0, nothing sampled."""
        dc = self.config.diffusion
        history = trim_padding(history)
        b, device = history.shape[0], history.device
        td = torch.full((b,), int(target_domain), dtype=torch.long, device=device)

        raw = self.embedding.lookup(history)
        valid = history != 0
        h = self.embedding.with_positions(raw, valid)
        guidance = self.encoder(self.embedding, history, raw, td) if self.encoder is not None else None
        memory = self.memory(guidance)
        den = self.denoiser
        cache = den.encode_history(h, valid)
        mem_kv = den.memory_kv(memory)
        mem_valid = memory.valid if memory is not None else None
        null_kv = den.null_kv(b) if (dc.cfg_w > 0 and den.null_memory is not None) else None
        sigma = self.sigma_data(td)

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
            """f_θ(x_t = x, t) on the cached history: one token through Encoder_c, then the decoder."""
            tt = torch.full((b,), t, dtype=torch.long, device=device)
            cond = den.condition(tt, td)

            def network(x_in: torch.Tensor) -> torch.Tensor:
                q = den.token_state(cache, x_in, cond, generator)
                out = den.decode(q, mem_kv, mem_valid)
                if null_kv is not None:  # classifier-free guidance: (1 + w)·f(cond) - w·f(null)
                    out = (1 + dc.cfg_w) * out - dc.cfg_w * den.decode(q, null_kv, None)
                return out

            return self.preconditioned(network, x, tt, sigma)

        if self.use_diffusion:
            x0_hat = reverse_chain(self.schedule, denoise, h.new_empty(b, self.dim),
                                   infer_steps if infer_steps is not None else dc.infer_steps,
                                   sampler or dc.sampler, generator)
        else:  # the −Diffusion control: one pass, x_t = 0
            x0_hat = denoise(h.new_zeros(b, self.dim), 0)

        table, bias = self.embedding.table(int(target_domain)), self.bias(int(target_domain))
        rep = x0_hat if guidance is None else x0_hat + self.config.model.score_alpha * guidance.domain(td)
        if self.config.model.score_softmax == "literal":  # Eq. 15 as printed: softmax over the d dims
            rep = torch.softmax(rep.float(), dim=-1)
        return self.item_scores(rep, table, self.scale, bias)
