"""Noise schedule, forward noising q(x_t | x_0), reverse steps (DDPM / DDIM) and the one reverse chain.

In the style of diffusers: the schedule object has `add_noise` and `step`, and the loop over the steps
(`reverse_chain`) is outside the models, which hand it their denoiser. Eq. 1-5 of the paper with ᾱ_t (the paper's Eq. 3 writes α_t, a typo; spec §3.2). Timesteps are
0-based: t in {0..T-1}, ᾱ_t = prod_{s<=t} (1 - β_s). All coefficients are float64 buffers, cast to
the data's dtype only when used.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Literal, Optional

import numpy as np
import torch
from torch import nn

SCHEDULES = ("trunc_lin", "linear", "cosine", "sqrt", "trunc_cos", "exp")
MAX_BETA = 0.999


def _betas_for_alpha_bar(steps: int, alpha_bar, left: bool = False) -> np.ndarray:
    """Discretise a continuous ᾱ(τ), τ in [0, 1], into T betas (DiffuRec `betas_for_alpha_bar[_left]`).

    left=True (trunc_cos) starts with β_0 = 1 - ᾱ(0) and stops one interval early, as DiffuRec does."""
    betas = [1.0 - alpha_bar(0.0)] if left else []
    for i in range(steps - 1 if left else steps):
        t1, t2 = i / steps, (i + 1) / steps
        betas.append(1.0 - alpha_bar(t2) / alpha_bar(t1))
    return np.minimum(np.array(betas, dtype=np.float64), MAX_BETA)


def make_betas(name: str, steps: int) -> np.ndarray:
    """β_0..β_{T-1} of a named schedule (spec §3.2 table), float64, before `beta_scale`."""
    if name in ("trunc_lin", "linear"):
        scale = 1000.0 / steps  # T-scaled so that ᾱ_T ≈ 0 for any T
        start, end = scale * 1e-4, scale * 0.02
        if name == "trunc_lin":
            start, end = start + 0.01, end + 0.01
            if end > 1:
                end = scale * 0.001 + 0.01
        return np.minimum(np.linspace(start, end, steps, dtype=np.float64), MAX_BETA)
    if name == "cosine":
        return _betas_for_alpha_bar(steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    if name == "sqrt":
        # ᾱ(τ) = 1 - sqrt(τ + 1e-4) reaches 0 at τ ≈ 1; clamp so the ratio stays defined (β -> MAX_BETA).
        return _betas_for_alpha_bar(steps, lambda t: max(1.0 - math.sqrt(t + 1e-4), 1e-12))
    if name == "trunc_cos":
        return _betas_for_alpha_bar(steps, lambda t: math.cos((t + 0.1) / 1.1 * math.pi / 2) ** 2, left=True)
    if name == "exp":
        # DreamRec `exp_beta_schedule` (β_min = 0.1, β_max = 10).
        x = np.linspace(1, 2 * steps + 1, steps, dtype=np.float64)
        betas = 1.0 - np.exp(-0.1 / steps - x * 0.5 * (10.0 - 0.1) / (steps * steps))
        return np.minimum(betas, MAX_BETA)
    raise ValueError(f"unknown noise schedule {name!r}; expected one of {SCHEDULES}")


def alphas_cumprod_for(name: str, steps: int, beta_scale: float = 1.0) -> np.ndarray:
    """ᾱ_0..ᾱ_{T-1} of a named schedule with β multiplied by `beta_scale` (clipped to MAX_BETA), float64."""
    betas = np.minimum(make_betas(name, steps) * beta_scale, MAX_BETA)
    return np.cumprod(1.0 - betas)


def terminal_alpha_bar(name: str, steps: int, beta_scale: float = 1.0) -> float:
    """ᾱ_T of the schedule as named (before any zero-terminal-SNR rescaling): how much x_0 is left in x_T."""
    return float(alphas_cumprod_for(name, steps, beta_scale)[-1])


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(ᾱ_t) so that ᾱ_T = 0 exactly while ᾱ_0 is kept (Lin et al. 2024, Alg. 1).

    The schedule's shape is kept; x_T then carries no trace of x_0, which is what sampling from N(0, I) assumes."""
    root = np.sqrt(alphas_cumprod)
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    return root**2


class NoiseSchedule(nn.Module):
    """β_t, ᾱ_t and the DDPM / DDIM reverse updates for T = `steps` (spec §3.2, §3.6).

    terminal_snr="zero" (default) rescales the schedule to end at ᾱ_T = 0; "as_is" keeps it and warns when
    ᾱ_T > 0.05 (Config.validate refuses such configs). ddpm_variance="posterior" uses the respaced chain's
    posterior variance, "fixed_large" DiffuRec's β'_t."""

    def __init__(
        self,
        steps: int,
        schedule: str = "trunc_lin",
        beta_scale: float = 1.0,
        terminal_snr: Literal["zero", "as_is"] = "zero",
        ddpm_variance: Literal["posterior", "fixed_large"] = "posterior",
    ) -> None:
        super().__init__()
        if terminal_snr not in ("zero", "as_is"):
            raise ValueError(f"unknown terminal_snr {terminal_snr!r}; expected 'zero' or 'as_is'")
        if ddpm_variance not in ("posterior", "fixed_large"):
            raise ValueError(f"unknown ddpm_variance {ddpm_variance!r}; expected 'posterior' or 'fixed_large'")
        self.steps = steps
        self.schedule = schedule
        self.terminal_snr = terminal_snr
        self.ddpm_variance = ddpm_variance
        alphas_cumprod = alphas_cumprod_for(schedule, steps, beta_scale)
        if terminal_snr == "zero" and steps > 1:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        elif alphas_cumprod[-1] > 0.05:
            warnings.warn(
                f"noise schedule {schedule!r} with T={steps}, beta_scale={beta_scale} ends at "
                f"alpha_bar_T={alphas_cumprod[-1]:.3f} (> 0.05): x_T is far from pure noise",
                stacklevel=2,
            )
        betas = 1.0 - alphas_cumprod / np.concatenate([[1.0], alphas_cumprod[:-1]])
        # persistent=False: derived from the config, so checkpoints do not carry (or fight over) them.
        self.register_buffer("betas", torch.from_numpy(betas), persistent=False)
        self.register_buffer("alphas_cumprod", torch.from_numpy(alphas_cumprod), persistent=False)
        self._ab = alphas_cumprod  # host copy: reverse-step coefficients without a device sync

    def snr(self) -> np.ndarray:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) of q(x_t | x_0) for unit-variance x_0, t = 0..T-1."""
        return self._ab / np.maximum(1.0 - self._ab, 1e-300)

    # ---------------------------------------------------------------- training

    def sample_timesteps(self, n: int, device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """t ~ Uniform{0..T-1}, one per example (Alg. 1 line 5), int64 (n,)."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.steps, (n,), generator=generator, device=gen_device).to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·ε (Eq. 3-4); x0, noise (B, d), t (B,)."""
        ab = self.alphas_cumprod[t]
        a = ab.sqrt().to(x0.dtype)[:, None]
        s = (1.0 - ab).sqrt().to(x0.dtype)[:, None]
        return a * x0 + s * noise

    # ---------------------------------------------------------------- inference

    def timesteps(self, infer_steps: Optional[int] = None) -> list[int]:
        """K = infer_steps evenly spaced timesteps from T-1 down to 0 (None: K = T, every step, as DiffuRec)."""
        first = self.steps - 1
        k = self.steps if infer_steps is None else int(infer_steps)
        if not 1 <= k <= self.steps:
            raise ValueError(f"infer_steps={k} must be in 1..{self.steps} (reverse steps from t={first})")
        ts = np.unique(np.round(np.linspace(first, 0, k)).astype(np.int64))  # K = 1 -> [T-1]
        return [int(t) for t in ts[::-1]]

    def implied_noise(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: int) -> torch.Tensor:
        """ε̂ = (x_t - sqrt(ᾱ_t)·x̂_0) / sqrt(1 - ᾱ_t), the noise that x_t and x̂_0 imply at step t (DDIM's ε̂)."""
        ab_t = float(self._ab[t])
        return (x_t - math.sqrt(ab_t) * x0_hat) / math.sqrt(1.0 - ab_t)  # 1 - ᾱ_t > 0: ᾱ_t < 1 for t >= 0

    def step(
        self,
        x0_hat: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """One reverse step x_t -> x_{t_prev} given the denoiser's x̂_0 (t_prev = -1 after the last step).

        ddpm: posterior mean c1·x̂_0 + c2·x_t with β' recomputed between the kept steps (respacing, as in
        improved DDPM), plus noise of the respaced posterior variance β̃' = (1 - ᾱ_{t'}) / (1 - ᾱ_t)·β' (or
        DiffuRec's fixed-large β'), except on the last step, which therefore returns x̂_0.
        ddim (η = 0): x_{t'} = sqrt(ᾱ_{t'})·x̂_0 + sqrt(1 - ᾱ_{t'})·ε̂, deterministic."""
        ab_t = float(self._ab[t])
        ab_prev = float(self._ab[t_prev]) if t_prev >= 0 else 1.0
        if sampler == "ddim":
            eps = self.implied_noise(x_t, x0_hat, t)
            return math.sqrt(ab_prev) * x0_hat + math.sqrt(1.0 - ab_prev) * eps
        if sampler != "ddpm":
            raise ValueError(f"unknown sampler {sampler!r}; expected 'ddpm' or 'ddim'")
        beta = 1.0 - ab_t / ab_prev  # β' of the respaced chain
        c1 = beta * math.sqrt(ab_prev) / (1.0 - ab_t)
        c2 = (1.0 - ab_prev) * math.sqrt(1.0 - beta) / (1.0 - ab_t)
        mean = c1 * x0_hat + c2 * x_t
        if t_prev < 0:
            return mean
        variance = beta if self.ddpm_variance == "fixed_large" else (1.0 - ab_prev) / (1.0 - ab_t) * beta
        noise = randn_like(x_t, generator)
        return mean + math.sqrt(variance) * noise


class EDMPreconditioning:
    """EDM preconditioning (Karras et al. 2022, Table 1) for the VP process x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε.

    Named as diffusers' EDM schedulers name them. EDM's variance-exploding form x_0 + σ·n with σ² = (1-ᾱ)/ᾱ is
    x_t / sqrt(ᾱ); substituting it into EDM's c_in, c_skip, c_out and λ(σ) gives, with v_t = ᾱ_t·σ_d² + 1 - ᾱ_t
    (the per-element variance of x_t when x_0 has std σ_d), finite coefficients for every t, ᾱ_t = 0 included:

        c_in   = 1 / sqrt(v_t)                    network input c_in·x_t has unit variance
        c_skip = sqrt(ᾱ_t)·σ_d² / v_t              x̂_0 = c_skip·x_t + c_out·F
        c_out  = σ_d·sqrt(1 - ᾱ_t) / sqrt(v_t)
        weight = 1 / c_out²                       weight·||x̂_0 - x_0||² = ||F - F*||², F* of unit variance

    EDM's c_noise (ln σ / 4) is left to the model's timestep embedding of the discrete t. `sigma_data` is per row
    (B,) or a float; every coefficient comes back as (B, 1) in x's dtype."""

    def __init__(self, schedule: "NoiseSchedule") -> None:
        self.schedule = schedule  # read at every call: its buffers follow the model across devices

    def _terms(self, t: torch.Tensor, sigma_data: torch.Tensor | float, like: torch.Tensor):
        ab = self.schedule.alphas_cumprod[t].to(like.dtype)[:, None]
        sd = torch.as_tensor(sigma_data, dtype=like.dtype, device=like.device)
        sd = sd[:, None] if sd.dim() == 1 else sd
        var = ab * sd**2 + (1.0 - ab)
        return ab, sd, var

    def precondition_inputs(self, x_t: torch.Tensor, t: torch.Tensor, sigma_data) -> torch.Tensor:
        """c_in·x_t (B, d)."""
        _, _, var = self._terms(t, sigma_data, x_t)
        return x_t * var.rsqrt()

    def precondition_outputs(self, x_t: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor,
                             sigma_data) -> torch.Tensor:
        """x̂_0 = c_skip·x_t + c_out·F (B, d)."""
        ab, sd, var = self._terms(t, sigma_data, x_t)
        c_skip = ab.sqrt() * sd**2 / var
        c_out = sd * (1.0 - ab).sqrt() * var.rsqrt()
        return c_skip * x_t + c_out * model_output

    def wrap(self, network: Callable[[torch.Tensor], torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
             sigma_data) -> torch.Tensor:
        """x̂_0 = c_skip·x_t + c_out·F(c_in·x_t) (B, d): the network F (its t and conditioning bound) preconditioned."""
        return self.precondition_outputs(x_t, network(self.precondition_inputs(x_t, t, sigma_data)), t, sigma_data)

    def terminal_output(self, model_output: torch.Tensor, sigma_data) -> torch.Tensor:
        """x̂_0 = σ_d·F (B, d): the output head where ᾱ = 0 (c_skip = 0, c_out = σ_d), whatever the input was."""
        sd = torch.as_tensor(sigma_data, dtype=model_output.dtype, device=model_output.device)
        return (sd[:, None] if sd.dim() == 1 else sd) * model_output

    def loss_weight(self, t: torch.Tensor, sigma_data, like: torch.Tensor) -> torch.Tensor:
        """1 / c_out² (B,): the per-example weight of ||x̂_0 - x_0||² in L_diff."""
        ab, sd, var = self._terms(t, sigma_data, like)
        return (var / (sd**2 * (1.0 - ab).clamp_min(1e-12)))[:, 0]


def reverse_chain(
    schedule: NoiseSchedule,
    denoise: Callable[[torch.Tensor, int], torch.Tensor],
    like: torch.Tensor,
    infer_steps: Optional[int],
    sampler: Literal["ddpm", "ddim"],
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """x̂_0 (B, d) of the reverse process (Eq. 5; Alg. 2 of DDPM, or DDIM with η = 0) from x_T ~ N(0, I).

    denoise(x_t (B, d), t) -> x̂_0 (B, d) is the model's f_θ with its conditioning (and EDM wrap) bound; `like`
    (B, d) gives x_T's shape, dtype and device. K = infer_steps timesteps (`NoiseSchedule.timesteps`); each step
    feeds x̂_0 to `NoiseSchedule.step`, and the last one returns its x̂_0 (K = 1: one denoiser call on pure noise)."""
    steps = schedule.timesteps(infer_steps)
    x = randn_like(like, generator)
    for t, t_next in zip(steps, steps[1:]):
        x = schedule.step(denoise(x, t), t, t_next, x, sampler, generator)
    return denoise(x, steps[-1])


def randn_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """N(0, I) noise shaped like x, drawn from `generator` on its own device (a CPU generator works for CUDA x)."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
