"""Faithful DiffuRec (dpgdiff/models/diffurec.py) pinned against WHUIR/DiffuRec's formulas (issue #8 §3).

Each test states the DiffuRec behaviour it checks: conditioning h + λ·(x_t + temb), λ drawn at
inference, a learned PAD row visible to the attention, CE over the joint table, DDPM over all T
steps with the fixed-large variance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpgdiff.config import Config, ConfigError
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models import DiffuRec, DPGDiff, build_model
from dpgdiff.models.denoiser import inject_additive
from dpgdiff.models.layers import self_attention_mask

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
ITEMS = ItemSpace(n_items_x=3, n_items_y=2)  # internal ids: PAD 0, X 1..3, Y 4..5
TINY = {"model.name": "diffurec", "model.dim": 4, "model.n_heads": 2, "model.n_c_layers": 1,
        "diffusion.steps": 8, "diffusion.schedule": "cosine", "model.lambda_u": 0.5,
        "model.dropout": 0.0, "model.emb_dropout": 0.0}


def tiny(**overrides) -> DiffuRec:
    torch.manual_seed(0)
    model = DiffuRec(Config().with_overrides({**TINY, **overrides}), ITEMS, max_len=3)
    return model.eval()


def layer_norm(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """DiffuRec's TF-style LayerNorm with unit weight and zero bias, by hand."""
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + eps)


def zero_blocks(model: DiffuRec) -> None:
    """Every transformer block becomes the identity: x + 0 + 0."""
    with torch.no_grad():
        for block in model.denoiser.blocks:
            for lin in (block.qkv, block.proj, block.ffn.fc1, block.ffn.fc2):
                lin.weight.zero_()
                lin.bias.zero_()


def test_forward_matches_the_hand_computed_formula():
    """With identity blocks, x̂_0 = LN(LN(E[last]) + λ·(x_t + temb)): λ scales the time embedding too."""
    model = tiny(**{"model.lambda_infer": "mean"})
    zero_blocks(model)
    temb = torch.tensor([0.4, -0.2, 1.0, 0.0])
    with torch.no_grad():
        model.item.weight.copy_(torch.tensor([
            [9.0, 9.0, -9.0, 0.0],  # PAD
            [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, -1.0], [2.0, 2.0, 1.0, 0.0],  # X
            [1.0, -1.0, 2.0, 0.0], [0.5, 0.5, 0.5, -1.5],  # Y
        ]))
        last = model.denoiser.time_emb.mlp[-1]
        last.weight.zero_()
        last.bias.copy_(temb)  # temb(t) = this bias for every t
    history = torch.tensor([[0, 1, 4]])
    x_t = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    h, valid = model.embed(history)
    assert valid.tolist() == [[False, True, True]]
    got = model.denoiser(h, valid, x_t, torch.tensor([3]))
    # E[4] = [1, -1, 2, 0]: mean 0.5, var 1.25.
    h_last = (torch.tensor([1.0, -1.0, 2.0, 0.0]) - 0.5) / math.sqrt(1.25)
    z = h_last + 0.5 * (x_t[0] + temb)  # λ = λ_u = 0.5 (lambda_infer = mean)
    assert torch.allclose(got[0], layer_norm(z), atol=1e-6)
    # The harness's former form h + λ·x_t + temb differs: temb enters unscaled there.
    assert not torch.allclose(got[0], layer_norm(h_last + 0.5 * x_t[0] + temb), atol=1e-3)


def reference_block(block, x: torch.Tensor, valid: torch.Tensor, n_heads: int) -> torch.Tensor:
    """One DiffuRec TransformerBlock written out (eval mode): pre-LN attention with the query-row mask, pre-LN FFN."""
    b, l, d = x.shape
    dh = d // n_heads
    a = F.layer_norm(x, (d,), block.ln1.weight, block.ln1.bias, block.ln1.eps)
    q, k, v = (a @ block.qkv.weight.t() + block.qkv.bias).split(d, -1)
    out = torch.zeros_like(x)
    for head in range(n_heads):
        sl = slice(head * dh, (head + 1) * dh)
        corr = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh)  # (B, L, L)
        corr = corr.masked_fill(~valid[:, :, None], -1e9)  # DiffuRec masks padding *query rows*
        out[..., sl] = corr.softmax(-1) @ v[..., sl]  # padding keys stay visible
    x = x + out @ block.proj.weight.t() + block.proj.bias
    f = F.layer_norm(x, (d,), block.ln2.weight, block.ln2.bias, block.ln2.eps)
    return x + block.ffn.fc2(F.gelu(block.ffn.fc1(f)))


def test_forward_matches_a_written_out_diffurec_block():
    # Two blocks: the padding-query-row mask shapes the padding rows of block 1, which block 2 reads.
    model = tiny(**{"model.lambda_infer": "mean", "model.n_c_layers": 2})
    history = torch.tensor([[0, 2, 5], [3, 1, 4]])
    x_t = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([5, 0])
    with torch.no_grad():
        h, valid = model.embed(history)
        got = model.denoiser(h, valid, x_t, t)
        ref = h + 0.5 * (x_t + model.denoiser.time_emb(t))[:, None, :]
        for block in model.denoiser.blocks:
            ref = reference_block(block, ref, valid, n_heads=2)
        ref = F.layer_norm(ref, (4,), model.denoiser.norm.weight, model.denoiser.norm.bias, 1e-12)[:, -1]
        assert torch.allclose(got, ref, atol=1e-5)
        # A causal mask (the harness's) gives a different x̂_0 for the padded row.
        causal = h + 0.5 * (x_t + model.denoiser.time_emb(t))[:, None, :]
        for block in model.denoiser.blocks:
            causal, _ = block(causal, self_attention_mask(valid, "causal"))
        causal = model.denoiser.norm(causal)[:, -1]
        assert not torch.allclose(got[0], causal[0], atol=1e-3)
        # The PAD row is a learned vector that the attention sees: changing it changes row 0 only.
        model.item.weight[0] += torch.tensor([1.0, -2.0, 0.5, 0.0])  # not a constant shift: LN removes those
        h2, _ = model.embed(history)
        moved = model.denoiser(h2, valid, x_t, t)
    assert not torch.allclose(moved[0], got[0], atol=1e-4)
    assert torch.allclose(moved[1], got[1], atol=1e-6)


def test_lambda_is_drawn_at_inference():
    """DiffuRec draws λ ~ N(λ_u, λ_u) on every call, in eval mode too; lambda_infer=mean fixes it to λ_u."""
    h = torch.zeros(50, 15, 64)
    lam = inject_additive(h, torch.ones(50, 64), 0.3, True, torch.Generator().manual_seed(0))
    assert abs(float(lam.mean()) - 0.3) < 0.005 and abs(float(lam.std()) - 0.3) < 0.005
    assert float(lam.std(-1).min()) > 0.2  # elementwise, not one draw per row
    assert torch.equal(inject_additive(h, torch.ones(50, 64), 0.3, False), torch.full_like(h, 0.3))

    history = torch.tensor([[0, 2, 5], [3, 1, 4]])
    x_t, t = torch.randn(2, 4), torch.tensor([5, 0])
    for infer, stochastic in (("sample", True), ("mean", False)):
        model = tiny(**{"model.lambda_infer": infer})
        assert not model.training
        with torch.no_grad():
            h, valid = model.embed(history)
            outs = [model.denoiser(h, valid, x_t, t, torch.Generator().manual_seed(s)) for s in (1, 2, 1)]
        assert torch.equal(outs[0], outs[2])  # seeded: reproducible
        assert (not torch.allclose(outs[0], outs[1])) == stochastic


def test_loss_is_ce_over_the_joint_table():
    """DiffuRec `loss_diffu_ce`: CE of x̂_0·E^T over every row of E (PAD, X and Y), whatever the target domain."""
    model = tiny().train()
    history = torch.tensor([[0, 2, 5], [3, 1, 4], [0, 0, 4]])
    target = torch.tensor([1, 3, 2])  # X targets only
    x0_hat = torch.randn(3, 4)
    model.denoiser.forward = lambda *args, **kw: x0_hat  # pin x̂_0 to check the loss around it
    out = model.loss(history, target, torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(0))
    want = F.cross_entropy(x0_hat @ model.item.weight.t(), target)
    assert torch.allclose(out["total"], want, atol=1e-6) and set(out) == {"total", "rec"}
    out["total"].backward()
    grad = model.item.weight.grad
    # Y rows and the PAD row are in the softmax of X targets: a d*-restricted CE would leave them at 0
    # (they are not in x_0 either, since x_0 is the X target's row and x̂_0 is pinned).
    assert grad[4:].abs().sum(1).min() > 0 and grad[0].abs().sum() > 0


def test_embed_pads_to_max_len_and_rejects_mask():
    model = tiny()
    h_narrow, v_narrow = model.embed(torch.tensor([[2, 5]]))
    h_wide, v_wide = model.embed(torch.tensor([[0, 2, 5]]))
    assert h_narrow.shape == (1, 3, 4) and torch.equal(h_narrow, h_wide) and torch.equal(v_narrow, v_wide)
    with pytest.raises(ValueError, match="MASK"):
        model.embed(torch.tensor([[0, 2, ITEMS.mask]]))
    with pytest.raises(ValueError, match="max_len"):
        model.embed(torch.tensor([[1, 2, 3, 4]]))


def test_full_ddpm_chain_uses_diffurec_fixed_large_variance():
    """DiffuRec `p_sample` over all T steps: x_{t-1} = c1·x̂_0 + c2·x_t + sqrt(β_t)·ε for t >= 1, x̂_0 at t = 0.

    configs/diffurec.yaml keeps DiffuRec's schedule as is and its fixed-large variance (diffusion.ddpm_variance)."""
    model = tiny(**{"diffusion.schedule": "trunc_lin", "diffusion.steps": 32, "diffusion.terminal_snr": "as_is",
                    "diffusion.ddpm_variance": "fixed_large"})  # as configs/diffurec.yaml
    sched = model.schedule
    betas = sched.betas.numpy()
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    c1 = betas * np.sqrt(ab_prev) / (1 - ab)
    c2 = (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    assert sched.timesteps(None) == list(range(31, -1, -1))
    x0, xt = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    for t in (31, 17, 1):
        got = sched.step(x0, t, t - 1, xt, "ddpm", torch.Generator().manual_seed(t))
        eps = torch.randn(5, 4, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        assert torch.allclose(got, c1[t] * x0 + c2[t] * xt + math.sqrt(betas[t]) * eps, atol=1e-10)
    assert torch.allclose(sched.step(x0, 0, -1, xt, "ddpm"), x0, atol=1e-10)  # c1[0] = 1, c2[0] = 0


def test_score_restricts_to_the_target_domain_and_is_seeded():
    model = tiny()
    history = torch.tensor([[0, 2, 5], [3, 1, 4]])
    s = [model.score(history, DOMAIN_Y, generator=torch.Generator().manual_seed(k)) for k in (0, 0, 1)]
    assert s[0].shape == (2, ITEMS.n_items_y) and torch.equal(s[0], s[1]) and not torch.equal(s[0], s[2])
    assert model.score(history, DOMAIN_X, sampler="ddim", infer_steps=2).shape == (2, ITEMS.n_items_x)
    # Column j of the scores is local item j of that domain (rows 1 + Nx + j of the joint table).
    assert torch.equal(model.table(DOMAIN_Y), model.item.weight[4:6])


def test_config_defaults_and_validation():
    # DiffuRec has its own CE over the joint table: the loss section is not its to set.
    with pytest.raises(ConfigError, match="model.name='diffurec' does not read loss.ce_impl"):
        Config().with_overrides({"model.name": "diffurec", "loss.ce_impl": "chunked"})
    with pytest.raises(ConfigError, match="lambda_infer"):
        Config().with_overrides({"model.lambda_infer": "fixed"})
    cfg = Config.from_yaml(ROOT / "configs" / "diffurec.yaml")
    m, d = cfg.model, cfg.diffusion
    assert (m.name, m.lambda_infer, m.item_init_std) == ("diffurec", "sample", 1.0)
    assert (d.sampler, d.infer_steps, d.val_procedure()) == ("ddpm", None, ("ddpm", None))  # every step, val too
    assert (d.terminal_snr, d.ddpm_variance) == ("as_is", "fixed_large")  # DiffuRec's schedule and variance


def test_train_one_epoch_from_the_shipped_config(synthetic_dataset, tmp_path):
    from dpgdiff import train

    cfg = Config.from_yaml(ROOT / "configs" / "diffurec.yaml").with_overrides(
        {"model.dim": 16, "model.n_c_layers": 1, "train.epochs": 1, "train.batch_size": 128,
         "diffusion.steps": 8, "diffusion.val_infer_steps": 8, "diffusion.schedule": "cosine",
         "train.device": "cpu"})
    result = train(cfg, synthetic_dataset, out_dir=tmp_path)
    assert result.best_epoch == 1 and math.isfinite(result.test["test_mrr_sum"])
    assert type(build_model(cfg, synthetic_dataset)) is DiffuRec


def test_a_harness_variant_checkpoint_loads_as_dpgdiff_with_its_switches_off(synthetic_dataset, tmp_path):
    """model.diffurec_variant: harness (retired, issue 37) was DPG-Diff with DE, G and Tri-CL off and the additive
    x_t injection; a checkpoint of it loads as that DPG-Diff, with the same weights and scores."""
    from dpgdiff.data.ref import DatasetRef
    from dpgdiff.training.checkpoints import cpu_state, load_model, save_best

    base = {"model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 8}
    cfg = Config().with_overrides({**base, "model.disentangled_encoder": False, "model.guidance": False,
                                   "model.tri_cl": False, "model.xt_injection": "add"})
    torch.manual_seed(0)
    model = build_model(cfg, synthetic_dataset).eval()
    saved = cfg.to_dict()
    saved["model"].update(name="diffurec", diffurec_variant="harness", disentangled_encoder=True, guidance=True,
                          tri_cl=True, xt_injection="concat_token")  # a harness config kept the DPG-Diff defaults
    save_best(tmp_path / "best.pt", cpu_state(model), cfg, DatasetRef.identity(synthetic_dataset), 1, {})
    obj = torch.load(tmp_path / "best.pt", weights_only=True)
    torch.save({**obj, "config": saved}, tmp_path / "best.pt")  # as the old version wrote it
    loaded, loaded_cfg, _ = load_model(tmp_path / "best.pt", synthetic_dataset)
    assert type(loaded) is DPGDiff and loaded_cfg.model.xt_injection == "add" and loaded.encoder is None
    hist = torch.as_tensor(synthetic_dataset.test.history[:8])
    kw = dict(sampler="ddim", infer_steps=2)
    want = model.score(hist, DOMAIN_Y, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(loaded.score(hist, DOMAIN_Y, generator=torch.Generator().manual_seed(1), **kw), want)


def test_dpgdiff_add_injection_uses_the_diffurec_form(synthetic_dataset):
    """DPG-Diff with xt_injection=add: Encoder_c(h + λ·(x_t + temb + e_dom)), λ drawn per lambda_infer."""
    base = {"model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 8,
            "diffusion.schedule": "cosine", "model.xt_injection": "add", "model.lambda_u": 0.3}
    torch.manual_seed(0)
    model = build_model(Config().with_overrides({**base, "model.lambda_infer": "mean"}), synthetic_dataset).eval()
    den = model.denoiser
    hist = torch.as_tensor(synthetic_dataset.test.history[:4])
    dom = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        h, valid = model.embedding.sequence(hist)
        cache = den.encode_history(h, valid)
        x_t, t = torch.randn(4, 16), torch.tensor([0, 3, 5, 7])
        cond = den.condition(t, dom)
        got = den.token_state(cache, x_t, cond)
        want = den.encoder_c(h + 0.3 * (x_t + cond)[:, None, :], valid, den.attn_mode)[0][:, -1]
        assert torch.allclose(got, want, atol=1e-6)
        den.lambda_infer = "sample"
        a, b = (den.token_state(cache, x_t, cond, torch.Generator().manual_seed(s)) for s in (1, 2))
    assert not torch.allclose(a, b)
