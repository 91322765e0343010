"""DPG-Diff and the baselines: losses, ablation switches, cached inference, determinism (tiny dims, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dpgdiff.config import Config, model_reads
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y
from dpgdiff.models import DiffuRec, DPGDiff, SASRec, build_model
from dpgdiff.models.losses import domain_cross_entropy, info_nce, tri_view_cl

torch.set_num_threads(1)  # the test machine is shared; tiny models gain nothing from threads

# cosine: trunc_lin at T <= 20 does not reach pure noise (see test_diffusion.py)
TINY = {"model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 8, "diffusion.schedule": "cosine"}

# Table 3 rows -> (disentangled_encoder, guidance, tri_cl)
ABLATIONS = {
    "diff": (False, False, False),
    "diff_de": (True, False, False),
    "diff_de_g": (True, True, False),
    "diff_de_cl": (True, False, True),
    "full": (True, True, True),
}


def config(**overrides) -> Config:
    """TINY (the fields the chosen model reads) + overrides."""
    name = overrides.get("model.name", "dpgdiff")
    return Config().with_overrides({**{k: v for k, v in TINY.items() if model_reads(name, k)}, **overrides})


def ablation(name: str, **overrides) -> Config:
    de, g, cl = ABLATIONS[name]
    return config(**{"model.disentangled_encoder": de, "model.guidance": g, "model.tri_cl": cl}, **overrides)


def make(cfg: Config, dataset, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, dataset)


def loss_of(model, batch, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # dropout uses the global RNG; t, noise and augmentations use the generator
    return model.loss(*batch, generator=torch.Generator().manual_seed(seed))


def fit_losses(model, batch, optimizer, steps: int) -> list[float]:
    """The total loss before each of `steps` optimizer steps on one batch, with the same t / noise / augmentations
    every step (loss_of's seed): only the weights change. Also used by tests/test_c2dsr.py and test_abxi.py."""
    losses = []
    for _ in range(steps):
        total = loss_of(model, batch, seed=0)["total"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    return losses


def test_loss_decreases(synthetic_dataset, batch):
    model = make(config(), synthetic_dataset)
    assert set(loss_of(model, batch)) >= {"total", "diff", "rec", "rec_c", "rec_s", "cl"}
    losses = fit_losses(model, batch, torch.optim.Adam(model.parameters(), lr=3e-3), 30)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_switches_build_only_enabled_components(synthetic_dataset, batch, name):
    de, g, cl = ABLATIONS[name]
    model = make(ablation(name), synthetic_dataset)
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("encoder.") for n in names) == de
    assert any(".q.weight" in n and n.startswith("denoiser.decoder") for n in names) == de  # cross-attention
    assert (model.augmenter is not None) == cl
    assert model.memory_mode == (None if not de else ("tokens3" if g else "single"))
    out = loss_of(model, batch)
    assert ("rec_s" in out) == de and ("cl" in out) == cl
    out["total"].backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {n} received no gradient"
    # The components that are on really learn: their gradients are non-zero.
    core = ["embedding.item_x", "denoiser.encoder_c.blocks.0.qkv.weight", "denoiser.decoder.0.ffn.fc1.weight"]
    if de:
        core += ["encoder.enc_x.transformer.blocks.0.qkv.weight", "encoder.fuse.weight",
                 "denoiser.decoder.0.kv.weight"]
    params = dict(model.named_parameters())
    for n in core:
        assert params[n].grad.abs().sum() > 0, f"{name}: {n} has a zero gradient"


def test_guidance_changes_the_memory(synthetic_dataset, batch):
    """Diff+DE attends to [g_d] only; Diff+DE+G to [g_d, ĝ_x, ĝ_y]; seq adds the per-position states."""
    hist, _, dom = batch
    for name, mode, tokens in (("diff_de", "single", 1), ("full", "tokens3", 3)):
        model = make(ablation(name), synthetic_dataset)
        guidance = model.encoder(model.embedding, hist, model.embedding.lookup(hist), dom)
        assert model.memory(guidance).tokens.shape[1] == tokens
    model = make(config(**{"model.guidance_memory": "seq"}), synthetic_dataset)
    guidance = model.encoder(model.embedding, hist, model.embedding.lookup(hist), dom)
    mem = model.memory(guidance)
    assert mem.tokens.shape[1] == 1 + guidance.h_x.shape[1] + guidance.h_y.shape[1] and mem.valid is not None


def test_fixed_seed_gives_identical_loss(synthetic_dataset, batch):
    a = loss_of(make(config(), synthetic_dataset), batch, seed=3)
    b = loss_of(make(config(), synthetic_dataset), batch, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = loss_of(make(config(), synthetic_dataset), batch, seed=4)
    assert not torch.equal(a["total"], c["total"])


def uncached_scores(model: DPGDiff, history, domain: int, sampler: str, k: int, seed: int) -> torch.Tensor:
    """Reference Eq. 15 scores: every reverse step re-runs Encoder_c over [history; x_t] (no cache)."""
    gen = torch.Generator().manual_seed(seed)
    dom = torch.full((history.shape[0],), domain)
    h, valid = model.embedding.sequence(history)
    guidance = model.encoder(model.embedding, history, model.embedding.lookup(history), dom)
    memory = model.memory(guidance)
    x = torch.randn(history.shape[0], model.dim, generator=gen)
    steps = model.schedule.timesteps(k)
    for i, t in enumerate(steps):
        x0_hat = model.denoiser.reference_forward(h, valid, x, torch.full_like(dom, t), dom, memory)
        x = model.schedule.step(x0_hat, t, steps[i + 1] if i + 1 < len(steps) else -1, x, sampler, gen)
    rep = x + model.config.model.score_alpha * guidance.domain(dom)
    return rep @ model.embedding.table(domain).t()


@pytest.mark.parametrize("memory", ["tokens3", "seq"])
@pytest.mark.parametrize("sampler,k", [("ddpm", 8), ("ddim", 3), ("ddpm", 1)])
def test_cached_inference_equals_uncached_reference(synthetic_dataset, memory, sampler, k):
    model = make(config(**{"model.guidance_memory": memory}), synthetic_dataset).eval()
    hist = torch.as_tensor(synthetic_dataset.test.history[:32])
    for domain in (DOMAIN_X, DOMAIN_Y):
        fast = model.score(hist, domain, sampler=sampler, infer_steps=k, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            ref = uncached_scores(model, hist, domain, sampler, k, seed=9)
        assert fast.shape == (32, synthetic_dataset.items.n_items(domain))
        assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-4)


def one_step_reference(model: DPGDiff, hist: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ĝ_y) of a one-step reverse process towards domain Y, uncached: x_T drawn from `seed`, t = T - 1."""
    with torch.no_grad():
        dom = torch.full((hist.shape[0],), DOMAIN_Y)
        h, valid = model.embedding.sequence(hist)
        guidance = model.encoder(model.embedding, hist, model.embedding.lookup(hist), dom)
        x_t = torch.randn(hist.shape[0], model.dim, generator=torch.Generator().manual_seed(seed))
        t = torch.full_like(dom, model.schedule.steps - 1)
        x0_hat = model.denoiser.reference_forward(h, valid, x_t, t, dom, model.memory(guidance))
    return x0_hat, guidance.g_y


def test_one_step_score_is_x0_hat_plus_guidance(synthetic_dataset):
    """K = 1: the score is (x̂_0(x_T) + α·ĝ_{d*})·E^T with x̂_0 the denoiser's single prediction."""
    model = make(config(**{"model.score_alpha": 0.5}), synthetic_dataset).eval()
    hist = torch.as_tensor(synthetic_dataset.test.history[:8])
    got = model.score(hist, DOMAIN_Y, sampler="ddpm", infer_steps=1, generator=torch.Generator().manual_seed(2))
    x0_hat, g_y = one_step_reference(model, hist, seed=2)
    expected = (x0_hat + 0.5 * g_y) @ model.embedding.table(DOMAIN_Y).t().detach()
    assert torch.allclose(got, expected, atol=1e-4)


def test_scores_are_deterministic_for_a_fixed_generator(synthetic_dataset):
    model = make(config(), synthetic_dataset).eval()
    hist = torch.as_tensor(synthetic_dataset.valid.history[:16])
    for sampler in ("ddim", "ddpm"):
        a = model.score(hist, DOMAIN_X, sampler=sampler, infer_steps=4, generator=torch.Generator().manual_seed(1))
        b = model.score(hist, DOMAIN_X, sampler=sampler, infer_steps=4, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)


def test_domain_cross_entropy_matches_a_per_row_reference():
    torch.manual_seed(0)
    tables = (torch.randn(7, 4), torch.randn(5, 4))
    heads = [torch.randn(6, 4), torch.randn(6, 4)]
    dom = torch.tensor([0, 1, 1, 0, 1, 1])
    local = torch.tensor([3, 4, 0, 6, 2, 2])
    got = domain_cross_entropy(heads, local, dom, tables, scale=0.5)
    for head, value in zip(heads, got):
        per_row = torch.stack([
            F.cross_entropy(0.5 * head[i] @ tables[int(dom[i])].t(), local[i]) for i in range(6)
        ])
        expected = per_row[dom == 0].mean() + per_row[dom == 1].mean()
        assert torch.allclose(value, expected, atol=1e-5)
    glob = domain_cross_entropy(heads[:1], local, dom, tables, norm="global_mean")[0]
    ref = torch.stack([F.cross_entropy(heads[0][i] @ tables[int(dom[i])].t(), local[i]) for i in range(6)]).mean()
    assert torch.allclose(glob, ref, atol=1e-5)
    chunked = domain_cross_entropy(heads, local, dom, tables, scale=0.5, impl="chunked", chunk_rows=2)
    assert all(torch.allclose(c, g, atol=1e-6) for c, g in zip(chunked, got))


def test_info_nce_prefers_aligned_views():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    aligned = info_nce(a, a + 0.01 * torch.randn(16, 8))
    shuffled = info_nce(a, a[torch.randperm(16)])
    assert aligned < shuffled
    assert torch.allclose(tri_view_cl([a, a]), info_nce(a, a))
    assert torch.isfinite(info_nce(a, a, sim="dot", tau=1.0))


@pytest.mark.parametrize("overrides", [
    {"model.fusion": "gate", "model.pool": "mean", "model.position": "absolute", "model.item_init_std": 0.05},
    {"model.fusion": "sum", "loss.single_loss_repr": "fused"},
    {"model.xt_injection": "add", "loss.cl_aug_view": "with_xt"},
    {"loss.cl_aug_view": "denoiser", "loss.cl_sim": "dot", "loss.cl_tau": 1.0, "augment.sim_model": "random"},
    {"diffusion.cfg_p": 0.2, "diffusion.cfg_w": 1.5, "model.logit_scale": "inv_sqrt_d"},
    {"loss.ce_impl": "chunked", "loss.ce_chunk_rows": 16, "loss.domain_loss_norm": "global_mean",
     "model.x0_norm": "l2_sqrt_d"},
])
def test_config_variants_run(synthetic_dataset, batch, overrides):
    model = make(config(**overrides), synthetic_dataset)
    out = loss_of(model, batch)
    out["total"].backward()
    assert torch.isfinite(out["total"])
    model.eval()
    scores = model.score(batch[0][:8], DOMAIN_Y, sampler="ddpm", infer_steps=3,
                         generator=torch.Generator().manual_seed(0))
    assert scores.shape == (8, synthetic_dataset.items.n_items_y) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name,overrides", [
    ("sasrec", {}),
    ("diffurec", {}),
])
def test_baselines_run_loss_and_score(synthetic_dataset, batch, name, overrides):
    model = make(config(**{"model.name": name}, **overrides), synthetic_dataset)
    assert type(model) is {"sasrec": SASRec, "diffurec": DiffuRec}[name]
    out = loss_of(model, batch)
    out["total"].backward()
    assert torch.isfinite(out["total"])
    if name == "diffurec":
        assert set(out) == {"total", "rec"}  # CE on x̂_0 only (tests/test_diffurec.py pins it)
    model.eval()
    for domain in (DOMAIN_X, DOMAIN_Y):
        scores = model.score(batch[0][:8], domain, sampler="ddim", infer_steps=2,
                             generator=torch.Generator().manual_seed(0))
        assert scores.shape == (8, synthetic_dataset.items.n_items(domain)) and torch.isfinite(scores).all()


def test_bad_targets_and_histories_are_clear_errors(synthetic_dataset, batch):
    model = make(config(), synthetic_dataset)
    hist, target, dom = batch
    with pytest.raises(ValueError, match="is not an item of target_domain"):
        model.loss(hist, target, 1 - dom)
    with pytest.raises(ValueError, match="max_len"):
        model.loss(torch.cat([hist, hist], 1), target, dom)


def test_cfg_weight_without_null_branch_is_a_config_error(synthetic_dataset):
    from dpgdiff.config import ConfigError

    with pytest.raises(ConfigError, match="cfg_w"):
        make(config(**{"diffusion.cfg_w": 2.0}), synthetic_dataset)
    with pytest.raises(ConfigError, match="cfg_w"):
        make(ablation("diff", **{"diffusion.cfg_p": 0.1, "diffusion.cfg_w": 2.0}), synthetic_dataset)


def test_empty_domain_subsequence_uses_the_null_vector(synthetic_dataset):
    """A history without X items (possible in train.mode=last) gets ĝ_x = the learned null vector."""
    model = make(config(**{"model.dropout": 0.0, "model.emb_dropout": 0.0}), synthetic_dataset).eval()
    nx = synthetic_dataset.items.n_items_x
    hist = torch.zeros(4, 15, dtype=torch.long)
    hist[:, -3:] = torch.tensor([nx + 1, nx + 5, nx + 9])
    dom = torch.ones(4, dtype=torch.long)
    guidance = model.encoder(model.embedding, hist, model.embedding.lookup(hist), dom)
    assert torch.equal(guidance.g_x, model.encoder.enc_x.null.expand(4, -1))
    assert not torch.equal(guidance.g_y, model.encoder.enc_y.null.expand(4, -1))
    model.train()
    out = loss_of(model, (hist, torch.full((4,), nx + 2), dom))
    assert torch.isfinite(out["total"])


@pytest.mark.parametrize("name,overrides", [
    ("dpgdiff", {}),
    ("sasrec", {}),
    ("sasrec_single", {}),
    ("diffurec", {}),
    ("abxi", {}),
    ("dpgdiff", {"model.disentangled_encoder": False, "model.tri_cl": False, "model.xt_injection": "add"}),
])
def test_item_bias_is_learned_and_added_to_every_score(synthetic_dataset, batch, name, overrides):
    """model.item_bias: off builds no bias (old checkpoints still load); on, the loss trains it and the scores
    of item j move by exactly b_j."""
    plain = make(config(**{"model.name": name}, **overrides), synthetic_dataset)
    assert not any("bias_" in n or n == "item_bias" for n, _ in plain.named_parameters())
    model = make(config(**{"model.name": name, "model.item_bias": "zero"}, **overrides), synthetic_dataset)
    biases = {n: p for n, p in model.named_parameters() if "bias_" in n or n == "item_bias"}
    assert biases, [n for n, _ in model.named_parameters()]
    loss_of(model, batch)["total"].backward()
    bias_of = model.bias
    for domain in (DOMAIN_X, DOMAIN_Y):  # b_d is a view of (or is) a trained parameter
        leaf = bias_of(domain)._base if bias_of(domain)._base is not None else bias_of(domain)
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, domain

    model.eval()
    history = batch[0][:8]
    for domain in (DOMAIN_X, DOMAIN_Y):
        def scores():
            return model.score(history, domain, sampler="ddim", infer_steps=2, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for p in biases.values():
                p.zero_()
        before = scores()
        with torch.no_grad():
            for p in biases.values():
                p.copy_(torch.linspace(-1.0, 1.0, p.numel()))
        bias = bias_of(domain)
        assert bias.shape == (synthetic_dataset.items.n_items(domain),)
        assert torch.allclose(scores() - before, bias.expand_as(before), atol=1e-5)


@pytest.mark.parametrize("name", ["dpgdiff", "sasrec", "sasrec_single", "diffurec", "abxi"])
def test_popularity_item_bias_starts_at_centred_log_counts(synthetic_dataset, name):
    import numpy as np

    model = make(config(**{"model.name": name, "model.item_bias": "popularity"}), synthetic_dataset)
    counts = np.bincount(np.concatenate(synthetic_dataset.train_sequences), minlength=synthetic_dataset.items.n_tokens)
    items = synthetic_dataset.items
    for domain in (DOMAIN_X, DOMAIN_Y):
        prior = np.log1p(counts[items.offset(domain):items.offset(domain) + items.n_items(domain)])
        expected = torch.as_tensor(prior - prior.mean(), dtype=torch.float32)
        assert expected.std() > 0  # the synthetic set has a popularity skew to start from
        assert torch.allclose(model.bias(domain).detach(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="without model.item_bias"):
        make(config(**{"model.name": name}), synthetic_dataset).init_item_bias(counts)
