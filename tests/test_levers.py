"""Issue 23's kept levers: the −Diffusion control, Eq. 15's literal softmax, the CE on the terminal pass, EDM
preconditioning, train.init_from; and the retired ones refused by name (issue 37). Tiny dims, CPU, synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpgdiff.config import RETIRED_AT, Config, ConfigError, model_reads
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y
from dpgdiff.models import build_model
from dpgdiff.models.diffusion import EDMPreconditioning, NoiseSchedule
from dpgdiff.models.encoder import trim_padding

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = {"model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 8, "diffusion.schedule": "cosine"}


def config(**overrides) -> Config:
    """TINY (the fields the chosen model reads) + overrides."""
    name = overrides.get("model.name", "dpgdiff")
    return Config().with_overrides({**{k: v for k, v in TINY.items() if model_reads(name, k)}, **overrides})


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


def test_the_control_keeps_the_models_edm_output_head(synthetic_dataset, hist):
    """Issue 38: under diffusion.precond=edm the control's x̂_0 is σ_d·F(x_t = 0), the head of the model's K = 1
    pass from pure noise, so both start at one logit scale (the raw head started about 1/σ_d larger)."""
    edm = {"diffusion.precond": "edm", "diffusion.terminal_snr": "zero", "model.disentangled_encoder": False}
    control = make(config(**edm, **{"model.diffusion": False}), synthetic_dataset).eval()
    model = make(config(**edm, **{"loss.rec_timestep": "terminal", "diffusion.infer_steps": 1}), synthetic_dataset).eval()
    raw_head = make(config(**{**edm, "diffusion.precond": "none"}, **{"model.diffusion": False}), synthetic_dataset).eval()
    with torch.no_grad():
        h_trim = trim_padding(hist)
        td = torch.full((hist.shape[0],), DOMAIN_Y)
        raw = control.embedding.lookup(h_trim)
        valid = h_trim != 0
        cache = control.denoiser.encode_history(control.embedding.with_positions(raw, valid), valid)
        q = control.denoiser.encoder_c.extend(control.denoiser.dom_emb(td), cache.kv, cache.valid)
        sigma = control.sigma_data(td)
        expected = (sigma[:, None] * control.denoiser.decode(q, None, None)) @ control.embedding.table(DOMAIN_Y).t()
    got = scores(control, hist, 0)
    assert torch.allclose(got, expected, atol=1e-5)
    spread = {name: scores(m, hist, 0).std().item() for name, m in
              (("control", control), ("model", model), ("raw", raw_head))}
    assert 0.5 < spread["control"] / spread["model"] < 2.0, spread
    assert spread["raw"] / spread["model"] > 4.0, spread  # what the unmatched control did


def test_a_control_saved_before_the_matched_head_loads_with_the_raw_head():
    from dpgdiff.training.checkpoints import upgrade_saved_config

    saved = config(**{"model.diffusion": False, "diffusion.precond": "edm"}).to_dict()
    assert upgrade_saved_config(saved, revision=1)["diffusion"]["precond"] == "none"
    assert upgrade_saved_config(saved)["diffusion"]["precond"] == "edm"


def test_minus_diffusion_variant_applies_to_the_committed_config(synthetic_dataset):
    from tune.confirmation import ABLATIONS

    best = Config.from_yaml(REPO / "configs/food_kitchen-cpu/dpgdiff.yaml")
    variant = best.with_overrides(ABLATIONS["-Diffusion"])
    assert variant.model.diffusion is False and variant.loss.lambda_diff == 0.0
    model = make(variant.with_overrides({"model.dim": 16}), synthetic_dataset)
    assert model.denoiser.time_emb is None and not model.use_diffusion


# ------------------------------------------------------------------ B. Eq. 15 as printed; config errors


def test_literal_softmax_is_taken_over_the_d_dims_of_the_scored_sum(synthetic_dataset, hist):
    """score_softmax=literal: softmax(x̂_0 + α·ĝ) over the d dims, then the dot product with E_{d*} (K = 1)."""
    cfg = config(**{"model.score_softmax": "literal", "diffusion.infer_steps": 1})
    model = make(cfg, synthetic_dataset).eval()
    got = scores(model, hist, 7)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        td = torch.full((hist.shape[0],), DOMAIN_Y)
        g_y = model.predict_x0(hist, td, torch.zeros(hist.shape[0], 16), torch.zeros_like(td))[1]
        t_last = torch.full_like(td, cfg.diffusion.steps - 1)
        x0 = model.predict_x0(hist, td, torch.randn(hist.shape[0], 16, generator=gen), t_last)[0]
        rep = torch.softmax(x0 + g_y, -1)
    assert torch.allclose(got, rep @ model.embedding.table(DOMAIN_Y).t(), atol=1e-5)


def test_lever_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="diffusion.sigma_data"):
        config(**{"diffusion.sigma_data": 0.0})


def test_inference_overrides_refuse_training_fields():
    cfg = config()
    assert cfg.with_inference_overrides(["diffusion.infer_steps=2", "model.score_alpha=0"]).diffusion.infer_steps == 2
    with pytest.raises(ConfigError, match="model.dim.*cannot change on a trained model"):
        cfg.with_inference_overrides(["model.dim=8"])


@pytest.mark.parametrize("field,value", [
    ("model.query_init", "xt_plus_last"), ("diffusion.n_samples", 4), ("diffusion.start", "zero"),
    ("diffusion.self_cond", True), ("diffusion.target_detach", True), ("loss.lambda_diff_rank", 0.3),
    ("loss.diff_reduction", "sum"), ("loss.lambda_mix", 0.5), ("loss.ce_negatives", 256),
    ("loss.rec_timestep", "rollout"), ("loss.ce_impl", "sampled"),
])
def test_retired_levers_are_refused_by_name_with_the_commit_that_has_them(field, value):
    with pytest.raises(ConfigError, match=rf"{field}.*retired.*Commit {RETIRED_AT}"):
        config(**{field: value})
    section, key = field.split(".")
    with pytest.raises(ConfigError, match=rf"{field}.*retired"):
        Config.from_dict({section: {key: value}}, source="old.yaml")


def test_saved_configs_drop_retired_fields_that_only_shaped_training():
    """What an earlier version saved loads: training-only retired settings are dropped (scoring is the same),
    an inference-time one at today's behaviour is dropped, and one that changed scoring is refused."""
    saved = {"model": {"query_init": "noise"}, "diffusion": {"n_samples": 1, "self_cond": False, "target_detach": True},
             "loss": {"lambda_mix": 0.5, "ce_impl": "sampled", "ce_negatives": 64, "rec_timestep": "rollout"}}
    cfg = Config.from_saved(saved)
    assert cfg.loss.ce_impl == "full" and cfg.loss.rec_timestep == "terminal"
    with pytest.raises(ConfigError, match="diffusion.n_samples.*retired.*4 is not today's behaviour"):
        Config.from_saved({"diffusion": {"n_samples": 4}})


# ------------------------------------------------------------------ C. train what is scored


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


# ------------------------------------------------------------------ D. EDM preconditioning


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


# ------------------------------------------------------------------ E. train.init_from (embedding pretraining)


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


