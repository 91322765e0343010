"""Issue 23's levers: the −Diffusion control, inference options (posterior mean, start), EDM preconditioning,
Eq. 6's reduction, the ranking term on L_diff's pass, query init, self-conditioning, train.init_from (tiny dims,
CPU, synthetic data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpgdiff.config import Config, ConfigError
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y
from dpgdiff.models import build_model
from dpgdiff.models.diffusion import EDMPreconditioning, NoiseSchedule
from dpgdiff.models.encoder import trim_padding
from dpgdiff.models.losses import in_batch_rank_loss

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = {"model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 8, "diffusion.schedule": "cosine"}


def config(**overrides) -> Config:
    return Config().with_overrides({**TINY, **overrides})


def make(cfg: Config, dataset, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, dataset)


@pytest.fixture(scope="module")
def batch(synthetic_dataset):
    ex = synthetic_dataset.training_examples("prefix")
    idx = torch.randperm(len(ex), generator=torch.Generator().manual_seed(0))[:64]
    return (torch.as_tensor(ex.history)[idx], torch.as_tensor(ex.target)[idx],
            torch.as_tensor(ex.target_domain)[idx].long())


@pytest.fixture(scope="module")
def hist(synthetic_dataset):
    return torch.as_tensor(synthetic_dataset.test.history[:24])


def loss_of(model, batch, seed: int = 0):
    torch.manual_seed(seed)
    return model.loss(*batch, generator=torch.Generator().manual_seed(seed))


def scores(model, hist, seed: int, domain: int = DOMAIN_Y, **kw):
    return model.score(hist, domain, generator=torch.Generator().manual_seed(seed), **kw)


# ------------------------------------------------------------------ A. the −Diffusion control


def test_no_diffusion_control_has_no_timestep_no_x_t_and_no_l_diff(synthetic_dataset, batch, hist):
    model = make(config(**{"model.diffusion": False, "loss.lambda_diff": 1.0}), synthetic_dataset)
    assert model.denoiser.time_emb is None and not any("time_emb" in n for n, _ in model.named_parameters())
    out = loss_of(model, batch)
    assert "diff" not in out and {"rec_c", "rec_s", "cl"} <= set(out)
    out["total"].backward()  # the network trains without the diffusion
    model.eval()
    # One deterministic pass: no noise, and sampler / K / n_samples / the generator change nothing.
    a = scores(model, hist, 1, sampler="ddpm", infer_steps=8)
    b = scores(model, hist, 2, sampler="ddim", infer_steps=1)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="diffusion=false"):
        model.predict_x0(hist, torch.full((hist.shape[0],), DOMAIN_Y), torch.zeros(hist.shape[0], 16),
                         torch.zeros(hist.shape[0], dtype=torch.long))
    # The query token is e_dom[d*] alone: the score equals the denoiser run by hand on x_t = 0 without temb.
    with torch.no_grad():
        h_trim = trim_padding(hist)
        td = torch.full((hist.shape[0],), DOMAIN_Y)
        raw = model.embedding.lookup(h_trim)
        valid = h_trim != 0
        g = model.encoder(model.embedding, h_trim, raw, td)
        cache = model.denoiser.encode_history(model.embedding.with_positions(raw, valid), valid)
        q = model.denoiser.encoder_c.extend(model.denoiser.dom_emb(td), cache.kv, cache.valid)
        kv = model.denoiser.memory_kv(model.memory(g))
        x0_hat = model.denoiser.decode(q, kv, None)
        expected = (x0_hat + g.g_y) @ model.embedding.table(DOMAIN_Y).t()
    assert torch.allclose(a, expected, atol=1e-5)


def test_minus_diffusion_variant_applies_to_the_committed_config(synthetic_dataset):
    from tune.confirmation import ABLATIONS

    best = Config.from_yaml(REPO / "configs/food_kitchen-cpu/dpgdiff.yaml")
    variant = best.with_overrides(ABLATIONS["-Diffusion"])
    assert variant.model.diffusion is False and variant.loss.lambda_diff == 0.0
    model = make(variant.with_overrides({"model.dim": 16}), synthetic_dataset)
    assert model.denoiser.time_emb is None and not model.use_diffusion


# ------------------------------------------------------------------ B. inference: posterior mean, x_T = 0, guidance start


def test_n_samples_scores_the_mean_x0_of_independent_chains(synthetic_dataset, hist):
    model = make(config(**{"diffusion.sampler": "ddpm", "diffusion.infer_steps": 3}), synthetic_dataset).eval()
    many = make(config(**{"diffusion.sampler": "ddpm", "diffusion.infer_steps": 3, "diffusion.n_samples": 4}),
                synthetic_dataset).eval()
    # Four chains drawn one after another from one generator: the scores are linear in x̂_0 (items softmax),
    # so scoring the mean x̂_0 equals the mean of the four one-chain scores.
    gen = torch.Generator().manual_seed(5)
    singles = torch.stack([model.score(hist, DOMAIN_Y, generator=gen) for _ in range(4)])
    assert torch.allclose(scores(many, hist, 5), singles.mean(0), atol=1e-4)
    # A posterior-mean estimate: its spread over seeds is well below one chain's.
    spread = {n: torch.stack([scores(m, hist, s) for s in range(6)]).std(0).mean()
              for n, m in ((1, model), (4, many))}
    assert spread[4] < 0.7 * spread[1], spread


def test_literal_softmax_averages_x0_before_the_softmax(synthetic_dataset, hist):
    """score_softmax=literal is nonlinear in x̂_0: n_samples must average x̂_0, not the scores."""
    cfg = config(**{"model.score_softmax": "literal", "diffusion.n_samples": 3, "diffusion.infer_steps": 1})
    model = make(cfg, synthetic_dataset).eval()
    got = scores(model, hist, 7)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        td = torch.full((hist.shape[0],), DOMAIN_Y)
        g_y = model.predict_x0(hist, td, torch.zeros(hist.shape[0], 16), torch.zeros_like(td))[1]
        t_last = torch.full_like(td, cfg.diffusion.steps - 1)
        x0s = [model.predict_x0(hist, td, torch.randn(hist.shape[0], 16, generator=gen), t_last)[0] for _ in range(3)]
        rep = torch.softmax(torch.stack(x0s).mean(0) + g_y, -1)
    assert torch.allclose(got, rep @ model.embedding.table(DOMAIN_Y).t(), atol=1e-5)


def test_start_zero_is_deterministic_and_differs_from_noise(synthetic_dataset, hist):
    model = make(config(**{"diffusion.sampler": "ddim", "diffusion.infer_steps": 2, "diffusion.start": "zero"}),
                 synthetic_dataset).eval()
    assert torch.equal(scores(model, hist, 1), scores(model, hist, 2))
    noise = make(config(**{"diffusion.sampler": "ddim", "diffusion.infer_steps": 2}), synthetic_dataset).eval()
    assert not torch.allclose(scores(noise, hist, 1), scores(model, hist, 1))


def test_guidance_start_runs_k_steps_from_t0(synthetic_dataset, hist):
    schedule = NoiseSchedule(32, "trunc_lin")
    assert schedule.timesteps(4, start=9) == [9, 6, 3, 0]
    assert schedule.timesteps(None, start=3) == [3, 2, 1, 0]
    assert schedule.timesteps(32, start=3) == [3, 2, 1, 0]  # "every step" from t0
    assert schedule.timesteps(1) == [31]  # default unchanged
    cfg = config(**{"diffusion.start": "guidance", "diffusion.start_step": 0, "diffusion.infer_steps": 1,
                    "diffusion.sampler": "ddim"})
    model = make(cfg, synthetic_dataset).eval()
    got = scores(model, hist, 3)
    # K = 1 from t0 = 0: x_0 = sqrt(ᾱ_0)·ĝ + sqrt(1 - ᾱ_0)·ε, one denoiser call at t = 0.
    with torch.no_grad():
        td = torch.full((hist.shape[0],), DOMAIN_Y)
        _, g_y = model.predict_x0(hist, td, torch.zeros(hist.shape[0], 16), torch.zeros_like(td))
        eps = torch.randn(hist.shape[0], 16, generator=torch.Generator().manual_seed(3))
        x_t0 = model.schedule.add_noise(g_y, eps, torch.zeros_like(td))
        x0_hat, _ = model.predict_x0(hist, td, x_t0, torch.zeros_like(td))
        expected = (x0_hat + g_y) @ model.embedding.table(DOMAIN_Y).t()
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"diffusion.start": "guidance"}, "diffusion.start_step"),
    ({"diffusion.start": "guidance", "diffusion.start_step": 8}, "diffusion.start_step"),
    ({"diffusion.start": "guidance", "diffusion.start_step": 2, "diffusion.infer_steps": 4}, "diffusion.infer_steps"),
    ({"diffusion.start": "guidance", "diffusion.start_step": 2, "model.disentangled_encoder": False}, "diffusion.start"),
    ({"diffusion.start_step": 2}, "diffusion.start_step"),
    ({"model.query_init": "xt_plus_last", "model.xt_injection": "add"}, "model.query_init"),
    ({"diffusion.sigma_data": 0.0}, "diffusion.sigma_data"),
    ({"loss.lambda_diff_rank": -1.0}, "loss.lambda_diff_rank"),
])
def test_lever_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_inference_overrides_refuse_training_fields():
    cfg = config()
    assert cfg.with_inference_overrides(["diffusion.n_samples=16", "diffusion.start=zero"]).diffusion.n_samples == 16
    with pytest.raises(ConfigError, match="model.dim.*cannot change on a trained model"):
        cfg.with_inference_overrides(["model.dim=8"])


# ------------------------------------------------------------------ C. train what is scored; the query's start


def test_lambda_mix_trains_the_eq15_sum(synthetic_dataset, batch):
    model = make(config(**{"loss.lambda_mix": 0.5, "loss.lambda_s": 0.3, "model.score_alpha": 0.7}), synthetic_dataset)
    out = loss_of(model, batch)
    assert out["rec"] == pytest.approx(float(out["rec_c"] + 0.3 * out["rec_s"] + 0.5 * out["rec_mix"]), rel=1e-5)
    plain = loss_of(make(config(**{"loss.lambda_s": 0.3, "model.score_alpha": 0.7}), synthetic_dataset), batch)
    assert "rec_mix" not in plain and torch.equal(plain["rec_c"], out["rec_c"])


def record_denoise(model, monkeypatch) -> list:
    """Wraps model.denoise; the returned list gets (t, x_t, x̂_0) of every call, in order."""
    calls, inner = [], model.denoise

    def denoise(cache, x_t, t, *args, **kwargs):
        out = inner(cache, x_t, t, *args, **kwargs)
        calls.append((t.clone(), x_t.detach().clone(), out))
        return out
    monkeypatch.setattr(model, "denoise", denoise)
    return calls


@pytest.mark.parametrize("lambda_diff", [0.0, 0.5])
def test_terminal_rec_timestep_trains_the_ce_on_the_pure_noise_pass(synthetic_dataset, batch, lambda_diff, monkeypatch):
    """loss.rec_timestep=terminal: the CE reads x̂_0 denoised from x_T ~ N(0, I) at t = T-1 (what a K = 1 chain
    scores), L_diff keeps its sampled t; with lambda_diff = 0 that terminal pass is the only one."""
    base = {"loss.lambda_diff": lambda_diff, "loss.lambda_cl": 0.0}
    terminal = make(config(**base, **{"loss.rec_timestep": "terminal"}), synthetic_dataset)
    calls = record_denoise(terminal, monkeypatch)
    out = loss_of(terminal, batch)
    last = terminal.schedule.steps - 1
    assert len(calls) == (1 if lambda_diff == 0 else 2)
    t_rec, x_rec, x0_rec = calls[-1]
    assert bool((t_rec == last).all())
    assert abs(float(x_rec.std()) - 1.0) < 0.15  # pure noise, no x_0 in it
    if lambda_diff > 0:
        t_diff = calls[0][0]
        assert len(set(t_diff.tolist())) > 1 and "diff" in out  # L_diff on the sampled t
    if lambda_diff == 0:  # the loss reaches the network through the terminal pass
        (grad,) = torch.autograd.grad(out["total"], [x0_rec])
        assert float(grad.abs().sum()) > 0
    sampled = make(config(**base), synthetic_dataset)
    calls = record_denoise(sampled, monkeypatch)
    loss_of(sampled, batch)
    assert len(calls) == 1 and len(set(calls[0][0].tolist())) > 1  # the default: one pass at the sampled t


def test_in_batch_rank_loss_ranks_against_the_other_targets_of_the_same_domain():
    torch.manual_seed(0)
    x0_hat, x0 = torch.randn(5, 4), torch.randn(5, 4)
    target = torch.tensor([3, 4, 3, 7, 9])
    domain = torch.tensor([DOMAIN_X, DOMAIN_X, DOMAIN_X, DOMAIN_Y, DOMAIN_Y])
    got = in_batch_rank_loss(x0_hat, x0, target, domain, scale=0.5)
    logits = 0.5 * x0_hat @ x0.T
    # row 0 (item 3): row 2 is the same item, rows 3-4 the other domain -> only row 1 is a negative
    candidates = {0: [0, 1], 1: [1, 0, 2], 2: [2, 1], 3: [3, 4], 4: [4, 3]}
    want = torch.stack([-torch.log_softmax(logits[i, c], 0)[0] for i, c in candidates.items()]).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_lambda_diff_rank_ranks_the_sampled_t_pass_beside_the_terminal_ce(synthetic_dataset, batch, monkeypatch):
    """loss.lambda_diff_rank > 0 keeps L_diff's sampled-t pass even with lambda_diff = 0 under terminal, and that
    pass gets the in-batch ranking term (it gets no gradient without it)."""
    base = {"loss.lambda_diff": 0.0, "loss.lambda_cl": 0.0, "loss.rec_timestep": "terminal"}
    model = make(config(**base, **{"loss.lambda_diff_rank": 0.7}), synthetic_dataset)
    calls = record_denoise(model, monkeypatch)
    out = loss_of(model, batch)
    assert len(calls) == 2 and len(set(calls[0][0].tolist())) > 1
    assert bool((calls[1][0] == model.schedule.steps - 1).all())
    assert float(out["total"].detach()) == pytest.approx(float(out["rec"] + 0.7 * out["diff_rank"]), rel=1e-5)
    (grad,) = torch.autograd.grad(out["total"], [calls[0][2]])
    assert float(grad.abs().sum()) > 0
    plain = make(config(**base), synthetic_dataset)
    assert "diff_rank" not in loss_of(plain, batch)


@pytest.mark.parametrize("detach", [False, True])
def test_target_detach_keeps_the_ranking_term_off_the_target_rows(synthetic_dataset, batch, detach):
    """diffusion.target_detach: the ranking term (like L_diff) then reaches the item table only through the history."""
    only_rank = {"loss.lambda_rec": 0.0, "loss.lambda_cl": 0.0, "loss.lambda_diff": 0.0,
                 "loss.lambda_diff_rank": 1.0, "diffusion.target_detach": detach}
    model = make(config(**only_rank), synthetic_dataset)
    out = loss_of(model, batch)
    out["total"].backward()
    history, target, domain = batch
    local = model.target_local(target, domain)
    seen = set(history.flatten().tolist())
    rows = {DOMAIN_X: [], DOMAIN_Y: []}
    for item, row, d in zip(target.tolist(), local.tolist(), domain.tolist()):
        if item not in seen:
            rows[d].append(row)
    assert rows[DOMAIN_X] and rows[DOMAIN_Y]
    emb = model.embedding
    grad = torch.cat([emb.item_x.grad[rows[DOMAIN_X]], emb.item_y.grad[rows[DOMAIN_Y]]])
    assert (float(grad.abs().sum()) == 0.0) == detach


def test_rollout_trains_the_second_reverse_step_on_half_the_rows(synthetic_dataset, batch, monkeypatch):
    """loss.rec_timestep=rollout: after the terminal pass, one DDIM step from its (detached) x̂_0 to t < T-1 and a
    third pass there; about half of the rows' CE reads that pass, the rest the terminal one."""
    model = make(config(**{"loss.lambda_diff": 0.5, "loss.lambda_cl": 0.0, "loss.rec_timestep": "rollout"}),
                 synthetic_dataset)
    calls = record_denoise(model, monkeypatch)
    picked = []
    real_where = torch.where
    monkeypatch.setattr(torch, "where", lambda c, a, b: picked.append(c.squeeze(-1).clone()) or real_where(c, a, b))
    out = loss_of(model, batch)
    assert len(calls) == 3 and torch.isfinite(out["total"])
    last = model.schedule.steps - 1
    (_, x_last, first), (t2, x2, _) = calls[1], calls[2]
    assert bool((calls[1][0] == last).all()) and bool((t2 < last).all()) and len(set(t2.tolist())) > 1
    ab = model.schedule.alphas_cumprod.float()
    eps = (x_last - ab[last].sqrt() * first.detach()) / (1 - ab[last]).sqrt()
    expected = ab[t2].sqrt()[:, None] * first.detach() + (1 - ab[t2]).sqrt()[:, None] * eps
    assert torch.allclose(x2, expected, atol=1e-5)  # the DDIM step `score` takes from t = T-1 to t2
    share = float(picked[-1].float().mean())
    assert 0.25 < share < 0.75


def test_query_init_xt_plus_last_reads_the_last_history_state(synthetic_dataset, hist):
    """Cached inference equals an uncached pass over [history; x_t + cond + last state], and differs from noise init."""
    model = make(config(**{"model.query_init": "xt_plus_last"}), synthetic_dataset).eval()
    td = torch.full((hist.shape[0],), DOMAIN_X)
    x_t = torch.randn(hist.shape[0], 16, generator=torch.Generator().manual_seed(0))
    t = torch.full_like(td, 5)
    with torch.no_grad():
        fast, _ = model.predict_x0(hist, td, x_t, t)
        h_trim = trim_padding(hist)
        h, valid = model.embedding.sequence(h_trim)
        g = model.encoder(model.embedding, h_trim, model.embedding.lookup(h_trim), td)
        ref = model.denoiser.reference_forward(h, valid, x_t, t, td, model.memory(g))
        model.denoiser.query_init = "noise"
        other, _ = model.predict_x0(hist, td, x_t, t)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert not torch.allclose(fast, other, atol=1e-3)


# ------------------------------------------------------------------ D. Eq. 6's reduction; EDM preconditioning


def test_diff_reduction_sum_is_d_times_mean(synthetic_dataset, batch):
    mean = loss_of(make(config(), synthetic_dataset), batch)["diff"]
    total = loss_of(make(config(**{"loss.diff_reduction": "sum"}), synthetic_dataset), batch)["diff"]
    assert float(total) == pytest.approx(16 * float(mean), rel=1e-5)


def test_edm_coefficients_give_unit_variance_input_and_target_at_every_t():
    schedule = NoiseSchedule(16, "linear")  # zero terminal SNR: ᾱ_T = 0 must stay finite
    pre = EDMPreconditioning(schedule)
    g = torch.Generator().manual_seed(0)
    n, sigma_d = 20000, 0.1
    for t_val in (0, 5, 15):
        t = torch.full((n,), t_val)
        x0 = torch.randn(n, 4, generator=g, dtype=torch.float64) * sigma_d
        eps = torch.randn(n, 4, generator=g, dtype=torch.float64)
        x_t = schedule.add_noise(x0, eps, t)
        x_in = pre.precondition_inputs(x_t, t, sigma_d)
        assert x_in.std().item() == pytest.approx(1.0, rel=0.03)
        # F* solves precondition_outputs(x_t, F*) = x_0 and has unit variance; weight·(x̂_0 - x_0)² = (F - F*)².
        zero = pre.precondition_outputs(x_t, torch.zeros_like(x_t), t, sigma_d)
        unit = pre.precondition_outputs(x_t, torch.ones_like(x_t), t, sigma_d) - zero  # c_out
        target = (x0 - zero) / unit
        assert torch.allclose(pre.precondition_outputs(x_t, target, t, sigma_d), x0)
        assert target.std().item() == pytest.approx(1.0, rel=0.03)
        w = pre.loss_weight(t, sigma_d, x_t)
        f = torch.randn(n, 4, generator=g, dtype=torch.float64)
        lhs = w[:, None] * (pre.precondition_outputs(x_t, f, t, sigma_d) - x0) ** 2
        assert torch.allclose(lhs, (f - target) ** 2, rtol=1e-6, atol=1e-9)
        assert torch.isfinite(w).all()


def test_edm_precond_trains_and_scores_on_the_tables_scale(synthetic_dataset, batch, hist):
    model = make(config(**{"diffusion.precond": "edm"}), synthetic_dataset)
    assert model.denoiser.out_proj is not None and make(config(), synthetic_dataset).denoiser.out_proj is None
    sigma = model.sigma_data(torch.tensor([DOMAIN_X, DOMAIN_Y]))
    rms = [float(model.table(d).detach().pow(2).mean().sqrt()) for d in (DOMAIN_X, DOMAIN_Y)]
    assert sigma.tolist() == pytest.approx(rms, rel=1e-5)
    out = loss_of(model, batch)
    # At init F (a LayerNorm output) and the unit-variance target F* are independent: E(F - F*)² ≈ 2.
    assert 1.0 < float(out["diff"]) < 4.0
    out["total"].backward()
    model.eval()
    # x̂_0 is at the scale of x_0 (c_out ≤ σ_d): far below the LayerNorm output's norm sqrt(d) of precond=none.
    td = torch.full((hist.shape[0],), DOMAIN_Y)
    x0_hat, _ = model.predict_x0(hist, td, torch.randn(hist.shape[0], 16), torch.full_like(td, 7))
    assert float(x0_hat.pow(2).mean().sqrt()) <= 1.5 * rms[DOMAIN_Y]
    assert torch.isfinite(scores(model, hist, 0, infer_steps=4)).all()
    fixed = make(config(**{"diffusion.precond": "edm", "model.x0_norm": "l2_sqrt_d"}), synthetic_dataset)
    assert fixed.sigma_data(td).eq(1.0).all()


# ------------------------------------------------------------------ E. self-conditioning


def test_self_conditioning_feeds_the_previous_x0_back(synthetic_dataset, batch, hist):
    model = make(config(**{"diffusion.self_cond": True, "diffusion.infer_steps": 3}), synthetic_dataset)
    proj = model.denoiser.self_cond_proj
    assert proj is not None and torch.count_nonzero(proj.weight) == 0  # starts as the model without it
    plain = make(config(**{"diffusion.infer_steps": 3}), synthetic_dataset)
    # Training: both branches (p = 0.5 per batch) give a finite loss and a gradient to the projection when taken.
    grads = []
    for seed in range(6):
        model.zero_grad()
        loss_of(model, batch, seed)["total"].backward()
        grads.append(0.0 if proj.weight.grad is None else float(proj.weight.grad.abs().sum()))
    assert any(g > 0 for g in grads) and any(g == 0 for g in grads), grads
    model.eval(), plain.eval()
    with torch.no_grad():
        proj.weight.copy_(torch.eye(16))
    k1 = {"infer_steps": 1}
    # K = 1: nothing to feed back; K = 3: the later steps see x̂_0 of the step before.
    assert torch.allclose(scores(model, hist, 0, **k1), scores(plain, hist, 0, **k1), atol=1e-6)
    assert not torch.allclose(scores(model, hist, 0), scores(plain, hist, 0), atol=1e-4)


# ------------------------------------------------------------------ F. train.init_from (embedding pretraining)


def _donor(tmp_path, dataset, **overrides) -> Path:
    """A SASRec best.pt with random weights (what a trained one looks like to init_from)."""
    from dpgdiff.data.ref import DatasetRef
    from dpgdiff.training.checkpoints import cpu_state, save_best

    cfg = config(**{"model.name": "sasrec", "model.n_c_layers": 2, **overrides})
    donor = make(cfg, dataset, seed=5)
    path = tmp_path / "sasrec.pt"
    save_best(path, cpu_state(donor), cfg, DatasetRef.identity(dataset), 1, {})
    return path


def test_init_from_copies_item_tables_and_matching_blocks(synthetic_dataset, tmp_path):
    from dpgdiff.training.checkpoints import init_from_checkpoint

    path = _donor(tmp_path, synthetic_dataset)
    donor = torch.load(path, weights_only=True)["model"]
    model = make(config(), synthetic_dataset)  # Encoder_c: 1 block; the donor has 2
    copied = init_from_checkpoint(model, path, synthetic_dataset)
    state = model.state_dict()
    for name in ("embedding.item_x", "embedding.item_y", "embedding.mask_token", "embedding.pos.weight"):
        assert name in copied and torch.equal(state[name], donor[name])
    block, src = "denoiser.encoder_c.blocks.0.qkv.weight", "transformer.blocks.0.qkv.weight"
    assert torch.equal(state[block], donor[src]) and f"{block} <- {src}" in copied
    assert any(c.startswith("denoiser.encoder_c.blocks.0.") for c in copied)
    assert any(c.startswith("encoder.enc_x.transformer.blocks.0.") for c in copied)
    assert not any(".blocks.1." in c.split(" <- ")[0] for c in copied)  # the model has no second block
    assert not any(c.startswith("denoiser.decoder") or c.startswith("denoiser.time_emb") for c in copied)


def test_init_from_refuses_other_shapes_and_other_files(synthetic_dataset, tmp_path):
    from dpgdiff.training import CheckpointError
    from dpgdiff.training.checkpoints import init_from_checkpoint

    path = _donor(tmp_path, synthetic_dataset, **{"model.dim": 8})
    with pytest.raises(CheckpointError, match=r"embedding.item_x is \(1200, 8\) there but \(1200, 16\)"):
        init_from_checkpoint(make(config(), synthetic_dataset), path, synthetic_dataset)
    with pytest.raises(CheckpointError, match="no such"):
        init_from_checkpoint(make(config(), synthetic_dataset), tmp_path / "missing.pt", synthetic_dataset)


def test_train_init_from_starts_from_the_donor(synthetic_dataset, tmp_path, capsys):
    from dpgdiff.training import train

    path = _donor(tmp_path, synthetic_dataset)
    cfg = config(**{"train.init_from": str(path), "train.epochs": 1, "train.mode": "last", "train.device": "cpu",
                    "train.num_threads": 1, "diffusion.infer_steps": 1, "diffusion.sampler": "ddim"})
    train(cfg, synthetic_dataset, test=False)
    assert "train.init_from: copied" in capsys.readouterr().err


def test_the_commented_lever_entries_of_the_cpu_space_parse_when_uncommented():
    """search_spaces/food_kitchen-cpu.yaml carries issue 23's levers commented out; uncommented they form a valid
    space, and the configs at its corners validate."""
    import re

    import yaml

    from tune.space import load_space, parse_space

    path = REPO / "search_spaces/food_kitchen-cpu.yaml"
    text = path.read_text()
    keys = ("loss.lambda_mix", "model.query_init", "diffusion.self_cond", "loss.diff_reduction")
    entries = [line for line in text.splitlines()
               if re.match(r"\s*#\s*(" + "|".join(re.escape(k) for k in keys) + "):", line)]
    assert len(entries) == len(keys), entries
    assert not set(keys) & set(load_space(path).params)  # the committed space is unchanged
    uncommented = text
    for line in entries:
        uncommented = uncommented.replace(line, re.sub(r"^(\s*)#\s*", r"\1", line), 1)
    space = parse_space(yaml.safe_load(uncommented), source=f"{path} (uncommented)", text=uncommented)
    assert set(keys) <= set(space.params)
    for corner in (0, -1):
        values = {k: (space.params[k].values[corner] if space.params[k].values
                      else (space.params[k].low, space.params[k].high)[corner]) for k in keys}
        Config().with_overrides({**space.fixed, **values})
