"""Noise schedules, forward noising and the DDPM / DDIM reverse steps (dpgdiff.models.diffusion)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dpgdiff.config import Config, ConfigError
from dpgdiff.models.diffusion import SCHEDULES, NoiseSchedule, make_betas, reverse_chain, terminal_alpha_bar


def schedule(steps: int, name: str = "trunc_lin", beta_scale: float = 1.0, **kwargs) -> NoiseSchedule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NoiseSchedule(steps, name, beta_scale, **kwargs)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [10, 20, 32, 50, 100, 200])
@pytest.mark.parametrize("beta_scale", [0.5, 1.0, 2.0])
def test_every_schedule_ends_in_pure_noise_by_default(name, steps, beta_scale):
    """Zero terminal SNR: x_T carries nothing of x_0, whatever the schedule, T and beta_scale (issue 8 §2)."""
    s = schedule(steps, name, beta_scale)
    ab = s.alphas_cumprod.numpy()
    assert ab.dtype == np.float64
    assert np.all(np.diff(ab) < 0), "alpha_bar must be strictly decreasing"
    assert ab[-1] == 0.0 and s.snr()[-1] == 0.0
    as_named = schedule(steps, name, beta_scale, terminal_snr="as_is").alphas_cumprod.numpy()
    assert ab[0] == pytest.approx(as_named[0]), "the rescaling keeps alpha_bar_0"
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0)), "betas and alpha_bar agree"


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [20, 32, 50, 100, 200])
def test_as_is_schedules_decrease_from_near_one_to_near_zero(name, steps):
    ab = schedule(steps, name, terminal_snr="as_is").alphas_cumprod.numpy()
    assert np.all(np.diff(ab) < 0), "alpha_bar must be strictly decreasing"
    assert ab[0] > 0.75
    if name == "trunc_lin" and steps <= 20:
        # DiffuRec's trunc_lin falls back to small betas when s*0.02 + 0.01 > 1 (T <= 20), which leaves
        # alpha_bar_T ≈ 0.47. The constructor warns, and Config.validate refuses it under terminal_snr=as_is.
        assert 0.3 < ab[-1] < 0.6
        with pytest.warns(UserWarning, match="far from pure noise"):
            NoiseSchedule(steps, name, terminal_snr="as_is")
        assert terminal_alpha_bar(name, steps) == pytest.approx(ab[-1])
    else:
        assert ab[-1] < 0.05, f"{name} T={steps}: alpha_bar_T={ab[-1]:.3g}"


def test_betas_are_clipped_and_scaled():
    base = make_betas("cosine", 32)
    scaled = schedule(32, "cosine", beta_scale=2.0, terminal_snr="as_is").betas.numpy()
    assert np.all(scaled <= 0.999) and np.allclose(scaled, np.minimum(base * 2.0, 0.999))
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_betas("quadratic", 32)


def test_add_noise_follows_eq_4():
    s = schedule(32)
    x0, noise = torch.randn(5, 8), torch.randn(5, 8)
    t = torch.tensor([0, 3, 10, 20, 31])
    ab = s.alphas_cumprod[t].float()[:, None]
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    assert torch.allclose(s.add_noise(x0, noise, t), expected, atol=1e-6)
    ts = s.sample_timesteps(1000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert ts.min() == 0 and ts.max() == 31


def test_inference_timesteps():
    s = schedule(32)
    assert s.timesteps(1) == [31]
    assert s.timesteps(32) == list(range(31, -1, -1))
    for k in (2, 4, 8, 16):
        ts = s.timesteps(k)
        assert len(ts) == k and ts[0] == 31 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
    with pytest.raises(ValueError, match="infer_steps"):
        s.timesteps(33)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_last_step_returns_x0_hat(sampler):
    """K = 1: one reverse step from x_T returns the denoiser's x̂_0."""
    s = schedule(32)
    x0_hat, x_t = torch.randn(4, 8), torch.randn(4, 8)
    out = s.step(x0_hat, 31, -1, x_t, sampler, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0_hat, atol=1e-6)


@pytest.mark.parametrize("variance", ["posterior", "fixed_large"])
def test_ddpm_full_chain_is_the_standard_posterior(variance):
    """With K = T the respaced β' equals β_t: DDPM's posterior mean, with the posterior (or fixed-large) variance."""
    s = schedule(32, ddpm_variance=variance)
    t = 10
    b, ab, ab_prev = float(s.betas[t]), float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t - 1])
    x0_hat, x_t = torch.randn(3, 8), torch.randn(3, 8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = s.step(x0_hat, t, t - 1, x_t, "ddpm", g1)
    mean = b * math.sqrt(ab_prev) / (1 - ab) * x0_hat + (1 - ab_prev) * math.sqrt(1 - b) / (1 - ab) * x_t
    var = b if variance == "fixed_large" else (1 - ab_prev) / (1 - ab) * b
    expected = mean + math.sqrt(var) * torch.randn(x_t.shape, generator=g2)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("k", [2, 4, 8, 32])
def test_reverse_marginals_match_the_forward_process(sampler, k):
    """With an exact x̂_0 = x_0, every kept step's x_t' must be distributed as q(x_t' | x_0) =
    N(sqrt(ᾱ_t')·x_0, (1 - ᾱ_t')·I), also when K < T (issue 8 §5: fixed-large variance overshoots it)."""
    s = schedule(32)
    gen = torch.Generator().manual_seed(0)
    n, d = 40000, 4
    x0 = torch.tensor([1.5, -0.5, 0.0, 2.0]).expand(n, d)
    steps = s.timesteps(k)
    x = torch.randn(n, d, generator=gen)  # ᾱ_T = 0: q(x_T | x_0) is N(0, I)
    for t, t_prev in zip(steps, steps[1:]):
        x = s.step(x0, t, t_prev, x, sampler, gen)
        ab = float(s.alphas_cumprod[t_prev])
        assert torch.allclose(x.mean(0), math.sqrt(ab) * x0[0], atol=0.03), (t_prev, x.mean(0))
        assert torch.allclose(x.var(0), torch.full((d,), 1 - ab), rtol=0.05, atol=2e-3), (t_prev, x.var(0))


def test_fixed_large_variance_overshoots_when_respaced():
    """The issue's figure: t = 10 -> 5 with fixed-large β' gives a marginal variance of about twice the target."""
    s = schedule(32, ddpm_variance="fixed_large")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(40000, 2)
    ab10, ab5 = float(s.alphas_cumprod[10]), float(s.alphas_cumprod[5])
    x10 = math.sqrt(1 - ab10) * torch.randn(x0.shape, generator=gen)
    x5 = s.step(x0, 10, 5, x10, "ddpm", gen)
    assert x5.var().item() > 1.5 * (1 - ab5)


def test_config_refuses_schedules_that_never_reach_noise():
    """terminal_snr=as_is with an incomplete schedule is an error that names the fields and ᾱ_T (issue 8 §2)."""
    with pytest.raises(ConfigError, match=r"diffusion.schedule='trunc_lin' with diffusion.steps=10.*alpha_bar_T=0.508"):
        Config().with_overrides({"diffusion.terminal_snr": "as_is", "diffusion.steps": 10})
    with pytest.raises(ConfigError, match="beta_scale=0.5"):
        Config().with_overrides({"diffusion.terminal_snr": "as_is", "diffusion.steps": 20, "diffusion.beta_scale": 0.5})
    Config().with_overrides({"diffusion.terminal_snr": "as_is", "diffusion.steps": 32})  # ends at 1e-6: fine
    Config().with_overrides({"diffusion.steps": 10})  # zero terminal SNR: every schedule is fine


def test_ddim_is_deterministic_and_ddpm_is_seeded():
    s = schedule(32)
    x0_hat, x_t = torch.randn(3, 8), torch.randn(3, 8)
    d1 = s.step(x0_hat, 20, 10, x_t, "ddim", torch.Generator().manual_seed(1))
    d2 = s.step(x0_hat, 20, 10, x_t, "ddim", torch.Generator().manual_seed(2))
    assert torch.equal(d1, d2)
    p1 = s.step(x0_hat, 20, 10, x_t, "ddpm", torch.Generator().manual_seed(1))
    p2 = s.step(x0_hat, 20, 10, x_t, "ddpm", torch.Generator().manual_seed(1))
    p3 = s.step(x0_hat, 20, 10, x_t, "ddpm", torch.Generator().manual_seed(2))
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)
    with pytest.raises(ValueError, match="sampler"):
        s.step(x0_hat, 20, 10, x_t, "euler")


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_reverse_chain_calls_the_denoiser_at_the_k_timesteps_and_returns_the_last_x0(sampler):
    """The one reverse chain (both diffusion models call it): x_T ~ N(0, I) drawn from the generator, one denoiser
    call per timestep from T-1 down to 0, each step's x_t from `NoiseSchedule.step`, the last call's x̂_0 back."""
    s = NoiseSchedule(16, "cosine")
    target = torch.full((3, 4), 0.5)
    seen = []

    def denoise(x_t, t):
        seen.append((t, x_t.clone()))
        return target + 0.01 * t  # a denoiser that knows the answer, up to a t-dependent offset

    out = reverse_chain(s, denoise, torch.empty(3, 4), 4, sampler, torch.Generator().manual_seed(2))
    assert [t for t, _ in seen] == s.timesteps(4) and torch.equal(out, target)  # the last step is t = 0
    assert torch.equal(seen[0][1], torch.randn(3, 4, generator=torch.Generator().manual_seed(2)))  # x_T
    if sampler == "ddim":  # deterministic: each x_t is exactly NoiseSchedule.step on the previous x̂_0
        for (t, x_t), (t_next, x_next) in zip(seen, seen[1:]):
            assert torch.allclose(x_next, s.step(target + 0.01 * t, t, t_next, x_t, "ddim"))
    seen.clear()
    reverse_chain(s, denoise, torch.empty(3, 4), 1, sampler)
    assert [t for t, _ in seen] == [15]  # K = 1: one call on pure noise at t = T-1
