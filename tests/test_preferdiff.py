"""Issue 40: PreferDiff's preference loss (loss.lambda_prefer): its pieces against hand computations, the model's
term built from passes at the same t, and the option off touching nothing. Tiny dims, CPU, synthetic data."""

from __future__ import annotations

import math

import pytest
import torch

from dpgdiff.config import Config, ConfigError
from dpgdiff.models import build_model
from dpgdiff.models.losses import cosine_error, negative_centroids, preference_loss
from tests.test_levers import batch, config  # noqa: F401  (batch: a module fixture)

torch.set_num_threads(1)
PREFER = {"loss.lambda_prefer": 0.7, "loss.prefer_gamma": 2.0, "loss.prefer_lambda": 0.25}


def test_cosine_error_by_hand():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [-3.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [5.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # cos = 0, 1/√2, 1 (scale does not matter), -1
    want = torch.tensor([1.0, (1 - 1 / math.sqrt(2)) ** 2, 0.0, 4.0])
    assert torch.allclose(cosine_error(pred, target), want, atol=1e-6)


def test_negative_centroids_are_the_other_items_of_the_same_domain():
    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [3.0, 3.0], [9.0, 9.0]])
    target = torch.tensor([5, 7, 5, 9, 11])
    domain = torch.tensor([0, 0, 0, 0, 1])
    centroids, has = negative_centroids(x0, target, domain)
    want = torch.tensor([
        [1.5, 2.5],   # row 0 (item 5): rows 1 and 3; row 2 is item 5 again
        [8 / 3, 7 / 3],  # row 1 (item 7): rows 0, 2, 3
        [1.5, 2.5],   # row 2 (item 5): rows 1 and 3
        [5 / 3, 2.0],  # row 3 (item 9): rows 0, 1, 2
        [0.0, 0.0],   # row 4: the only row of its domain
    ])
    assert torch.allclose(centroids, want) and has.tolist() == [True, True, True, True, False]


def test_preference_loss_by_hand():
    err_pos, err_neg = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.6, 0.1, 0.0])
    has = torch.tensor([True, True, False])
    gamma, lam = 2.0, 0.25

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    prefer = -(log_sigmoid(-2.0 * (0.2 - 0.6)) + log_sigmoid(-2.0 * (0.5 - 0.1))) / 2  # row 2 has no negative
    want = (1 - lam) * prefer + lam * (0.2 + 0.5 + 0.3) / 3  # ... but keeps its err⁺
    got = preference_loss(err_pos, err_neg, has, gamma, lam)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # The positive reconstructed better than its negative lowers the loss; worse raises it.
    better = preference_loss(err_pos - 0.1, err_neg, has, gamma, lam)
    worse = preference_loss(err_pos, err_neg - 0.1, has, gamma, lam)
    assert better < got < worse


def test_the_models_term_contrasts_passes_at_the_same_t(synthetic_dataset, batch, monkeypatch):  # noqa: F811
    torch.manual_seed(0)
    model = build_model(config(**PREFER), synthetic_dataset)
    calls = []
    denoise = model.denoise

    def recording(cache, x_t, t, *args, **kwargs):
        x0_hat = denoise(cache, x_t, t, *args, **kwargs)
        calls.append((x_t, t, x0_hat))
        return x0_hat

    monkeypatch.setattr(model, "denoise", recording)
    seen = {}
    original = model.prefer_loss

    def spy(x0_hat, x0, *args):
        seen["x0"] = x0
        return original(x0_hat, x0, *args)

    monkeypatch.setattr(model, "prefer_loss", spy)
    out = model.loss(*batch, generator=torch.Generator().manual_seed(0))
    (x_t, t, x0_hat), (x_t_neg, t_neg, x0_hat_neg) = calls[0], calls[-1]
    assert len(calls) == 2 and torch.equal(t, t_neg) and not torch.equal(x_t, x_t_neg)
    history, target, domain = batch
    x0_neg, has = negative_centroids(seen["x0"], target, domain)
    want = preference_loss(cosine_error(x0_hat, seen["x0"]), cosine_error(x0_hat_neg, x0_neg), has, 2.0, 0.25)
    assert torch.equal(out["prefer"], want.detach())
    # The term trains the denoiser and the item tables.
    model.zero_grad()
    want.backward()
    assert model.embedding.item_x.grad.abs().sum() > 0 and model.denoiser.dec_norm.weight.grad.abs().sum() > 0


def test_on_adds_one_term_and_off_computes_nothing_more(synthetic_dataset, batch, monkeypatch):  # noqa: F811
    def run(cfg):
        torch.manual_seed(0)
        model = build_model(cfg, synthetic_dataset)
        calls = []
        denoise = model.denoise
        monkeypatch.setattr(model, "denoise", lambda *a, **k: calls.append(1) or denoise(*a, **k))
        torch.manual_seed(1)
        gen = torch.Generator().manual_seed(0)
        out = model.loss(*batch, generator=gen)
        return out, len(calls), gen.get_state()

    plain, n_plain, state_plain = run(config())
    off, n_off, state_off = run(config(**{"loss.lambda_prefer": 0.0}))
    on, n_on, state_on = run(config(**PREFER))
    assert n_off == n_plain == 1 and n_on == 2
    assert off.keys() == plain.keys() and "prefer" not in off and torch.equal(state_off, state_plain)
    for key in set(plain) - {"total"}:  # every other term is computed exactly as with the option off
        assert torch.equal(on[key], plain[key]), key
    assert torch.equal(on["total"].detach(), plain["total"].detach() + 0.7 * on["prefer"])
    assert not torch.equal(state_on, state_plain)  # the negatives' noise: drawn after everything else


def test_prefer_config_is_checked_and_inert_where_it_does_nothing():
    with pytest.raises(ConfigError, match=r"loss.prefer_lambda=1.5 is out of range"):
        config(**{"loss.lambda_prefer": 1.0, "loss.prefer_lambda": 1.5})
    with pytest.raises(ConfigError, match=r"loss.prefer_gamma=0.0 is out of range"):
        config(**{"loss.prefer_gamma": 0.0})
    with pytest.raises(ConfigError, match="does not read loss.lambda_prefer"):
        Config().with_overrides({"model.name": "sasrec", "loss.lambda_prefer": 1.0})
    assert "loss.lambda_prefer" in config().fields_read() and "loss.prefer_gamma" not in config().fields_read()
    assert {"loss.prefer_gamma", "loss.prefer_lambda"} <= set(config(**PREFER).fields_read())
    control = config(**{**PREFER, "model.diffusion": False})
    assert not any("prefer" in name for name in control.fields_read())  # the control has no x_t to contrast
