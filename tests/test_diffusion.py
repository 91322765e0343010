"""Noise schedules, forward noising and the DDPM / DDIM reverse steps (dpgdiff.models.diffusion)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dpgdiff.models.diffusion import SCHEDULES, NoiseSchedule, make_betas


def schedule(steps: int, name: str = "trunc_lin", beta_scale: float = 1.0) -> NoiseSchedule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NoiseSchedule(steps, name, beta_scale)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [20, 32, 50, 100, 200])
def test_alpha_bar_decreases_from_near_one_to_near_zero(name, steps):
    ab = schedule(steps, name).alphas_cumprod.numpy()
    assert ab.dtype == np.float64
    assert np.all(np.diff(ab) < 0), "alpha_bar must be strictly decreasing"
    assert ab[0] > 0.75
    if name == "trunc_lin" and steps <= 20:
        # Documented exception: DiffuRec's trunc_lin falls back to small betas when s*0.02 + 0.01 > 1
        # (T <= 20), which leaves alpha_bar_T ≈ 0.47. The constructor warns about it.
        assert 0.3 < ab[-1] < 0.6
        with pytest.warns(UserWarning, match="far from pure noise"):
            NoiseSchedule(steps, name)
    else:
        assert ab[-1] < 0.05, f"{name} T={steps}: alpha_bar_T={ab[-1]:.3g}"


def test_betas_are_clipped_and_scaled():
    base = make_betas("cosine", 32)
    scaled = schedule(32, "cosine", beta_scale=2.0).betas.numpy()
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


def test_ddpm_full_chain_is_the_standard_posterior():
    """With K = T the respaced β' equals β_t, so the mean is DDPM's posterior mean."""
    s = schedule(32)
    t = 10
    b, ab, ab_prev = float(s.betas[t]), float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t - 1])
    x0_hat, x_t = torch.randn(3, 8), torch.randn(3, 8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = s.step(x0_hat, t, t - 1, x_t, "ddpm", g1)
    mean = b * math.sqrt(ab_prev) / (1 - ab) * x0_hat + (1 - ab_prev) * math.sqrt(1 - b) / (1 - ab) * x_t
    expected = mean + math.sqrt(b) * torch.randn(x_t.shape, generator=g2)  # fixed-large variance β_t
    assert torch.allclose(out, expected, atol=1e-5)


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
