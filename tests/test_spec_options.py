"""Spec options of issue #8 §6: Adam β2, lr schedules (with exact resume), score_softmax=literal, SASRec-single."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpgdiff.config import Config, ConfigError
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y
from dpgdiff.models import SASRec, SASRecSingle, build_model
from dpgdiff.optim import LRSchedule, make_optimizer
import dpgdiff.training.loop as train_mod  # evaluate_model is looked up in the loop module
from dpgdiff import train
from dpgdiff.training import load_model
from tests.test_model import one_step_reference
from tests.test_train import strip_timing, tiny

torch.set_num_threads(1)

REAL_EVALUATE = train_mod.evaluate_model
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("field,value", [
    ("train.adam_beta2", 1.0), ("train.adam_beta2", 0.0), ("train.lr_step_epochs", 0),
    ("train.lr_step_gamma", 0.0), ("train.lr_plateau_factor", 1.0), ("train.lr_plateau_patience", -1),
    ("train.lr_schedule", "cosine"), ("model.score_softmax", "dims"), ("model.name", "sasrec_double"),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Config().with_overrides({field: value})


def test_defaults_and_shipped_configs():
    t = Config().train
    assert (t.adam_beta2, t.lr_schedule, t.lr_step_epochs, t.lr_step_gamma) == (0.999, "none", 100, 0.1)
    assert Config().model.score_softmax == "items"
    single = Config.from_yaml(ROOT / "configs" / "sasrec_single.yaml")
    assert single.model.name == "sasrec_single" and single.train.adam_beta2 == 0.98
    diffurec = Config.from_yaml(ROOT / "configs" / "diffurec.yaml")
    assert (diffurec.train.lr_schedule, diffurec.train.lr_step_epochs) == ("step", 100)  # DiffuRec StepLR(100, 0.1)


# ------------------------------------------------------------------ optimizer and schedules


def test_optimizer_uses_adam_beta2():
    model = torch.nn.Linear(2, 2)
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        opt = make_optimizer(Config().with_overrides({"train.optimizer": name, "train.adam_beta2": 0.98}), model)
        assert type(opt) is cls and opt.param_groups[0]["betas"] == (0.9, 0.98)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no optimizer steps here
def test_step_and_plateau_schedules():
    model = torch.nn.Linear(2, 2)
    cfg = Config().with_overrides({"train.lr": 1.0, "train.lr_schedule": "step", "train.lr_step_epochs": 2,
                                   "train.lr_step_gamma": 0.5})
    sched = LRSchedule(cfg, make_optimizer(cfg, model))
    lrs = []
    for _ in range(5):
        sched.epoch_end()
        sched.validation_end(0.0)  # ignored by step
        lrs.append(sched.lr)
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]

    cfg = Config().with_overrides({"train.lr": 1.0, "train.lr_schedule": "plateau", "train.lr_plateau_patience": 1,
                                   "train.lr_plateau_factor": 0.5})
    sched = LRSchedule(cfg, make_optimizer(cfg, model))
    lrs = []
    for score in (0.1, 0.2, 0.2, 0.15, 0.3, 0.1, 0.1):  # the decay comes after 2 passes without a new best
        sched.epoch_end()  # ignored by plateau
        sched.validation_end(score)
        lrs.append(sched.lr)
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]

    none = LRSchedule(Config(), make_optimizer(Config(), model))
    none.epoch_end()
    none.validation_end(1.0)
    assert none.lr == Config().train.lr and none.state_dict() == {"kind": "none", "scheduler": None}
    with pytest.raises(ValueError, match="lr schedule"):
        LRSchedule(cfg, make_optimizer(cfg, model)).load_state_dict(None)


def test_step_schedule_in_training(synthetic_dataset):
    cfg = tiny(**{"train.epochs": 3, "train.lr_schedule": "step", "train.lr_step_epochs": 1,
                  "train.lr_step_gamma": 0.5, "train.lr": 1e-3})
    result = train(cfg, synthetic_dataset)
    assert [h["lr"] for h in result.history] == pytest.approx([5e-4, 2.5e-4, 1.25e-4])


def fake_validation(monkeypatch, scores: list[float]) -> None:
    """Validation passes report `scores` in order (test passes stay real)."""
    real = REAL_EVALUATE
    it = iter(scores)

    def evaluate(model, dataset, which, config, **kw):
        result = real(model, dataset, which, config, **kw)
        if which == "valid":
            result.mrr_sum = next(it)
        return result

    monkeypatch.setattr(train_mod, "evaluate_model", evaluate)


@pytest.mark.parametrize("schedule", [
    # step_size 2: a scheduler rebuilt from scratch on resume would decay one epoch late.
    {"train.lr_schedule": "step", "train.lr_step_epochs": 2, "train.lr_step_gamma": 0.5},
    # A fresh plateau scheduler would count pass 2 (0.4 < 0.5) as a new best and not decay.
    {"train.lr_schedule": "plateau", "train.lr_plateau_patience": 0, "train.lr_plateau_factor": 0.5},
])
def test_resume_restores_the_lr_schedule_exactly(synthetic_dataset, tmp_path, monkeypatch, schedule):
    config = tiny(**{"train.epochs": 3, **schedule})
    scores = [0.5, 0.4, 0.3]
    fake_validation(monkeypatch, scores)
    full = train(config, synthetic_dataset, out_dir=tmp_path / "full")
    assert [h["lr"] for h in full.history] == pytest.approx([1e-3, 5e-4, 5e-4 if "step" in str(schedule) else 2.5e-4])

    fake_validation(monkeypatch, scores[:1])
    train(config.with_overrides({"train.epochs": 1}), synthetic_dataset, out_dir=tmp_path / "part")
    fake_validation(monkeypatch, scores[1:])
    resumed = train(config, synthetic_dataset, resume_from=tmp_path / "part" / "checkpoint", out_dir=tmp_path / "part")

    assert strip_timing(resumed.history) == strip_timing(full.history)
    a = torch.load(tmp_path / "full" / "checkpoint" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint" / "model.pt", weights_only=True)
    assert a["lr_schedule"] == b["lr_schedule"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# ------------------------------------------------------------------ score_softmax


def test_literal_score_softmax_is_eq15_as_printed(synthetic_dataset):
    """literal: s·softmax(x̂_0 + α·ĝ_{d*})·E^T, the softmax over the d dims (spec §5.1, A4)."""
    overrides = {"model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 8,
                 "diffusion.schedule": "cosine"}
    models = {}
    for mode in ("items", "literal"):
        torch.manual_seed(0)
        models[mode] = build_model(Config().with_overrides({**overrides, "model.score_softmax": mode}),
                                   synthetic_dataset).eval()
    model = models["items"]
    hist = torch.as_tensor(synthetic_dataset.test.history[:8])
    got = {m: models[m].score(hist, DOMAIN_Y, sampler="ddim", infer_steps=1,
                              generator=torch.Generator().manual_seed(2)) for m in models}
    x0_hat, g_y = one_step_reference(model, hist, seed=2)
    rep, table = x0_hat + g_y, model.embedding.table(DOMAIN_Y).detach()
    assert torch.allclose(got["items"], rep @ table.t(), atol=1e-4)
    assert torch.allclose(got["literal"], torch.softmax(rep, -1) @ table.t(), atol=1e-5)
    assert not torch.equal(got["items"].argsort(1), got["literal"].argsort(1))  # the ranking changes


# ------------------------------------------------------------------ SASRec-single


def test_sasrec_single_reads_only_the_target_domain(synthetic_dataset):
    torch.manual_seed(0)
    cfg = tiny(**{"model.name": "sasrec_single", "model.emb_dropout": 0.0, "model.dropout": 0.0})
    model = build_model(cfg, synthetic_dataset)
    assert type(model) is SASRecSingle and all(type(t) is SASRec for t in model.towers)
    items = synthetic_dataset.items
    # Separate parameters per domain; each tower's table has exactly its domain's items.
    assert not ({id(p) for p in model.towers[0].parameters()} & {id(p) for p in model.towers[1].parameters()})
    assert model.table(DOMAIN_X).shape[0] == items.n_items_x and model.table(DOMAIN_Y).shape[0] == items.n_items_y

    hist = torch.as_tensor(synthetic_dataset.test.history[:16])
    is_y = (hist > items.n_items_x) & (hist <= items.n_items_x + items.n_items_y)
    other = torch.where(is_y, items.n_items_x + 1 + (hist - items.n_items_x) % items.n_items_y, hist)  # new Y items
    assert not torch.equal(other, hist)
    model.eval()
    sx = model.score(hist, DOMAIN_X)
    assert sx.shape == (16, items.n_items_x)
    assert torch.equal(sx, model.score(other, DOMAIN_X))  # Y items never reach the X tower
    assert not torch.equal(model.score(hist, DOMAIN_Y), model.score(other, DOMAIN_Y))
    # The X tower on s_x is a plain SASRec over X ids.
    s_x = model.subsequence(hist, DOMAIN_X)
    assert int(s_x.max()) <= items.n_items_x and torch.equal(s_x[s_x > 0], hist[(hist >= 1) & (hist <= items.n_items_x)])
    assert torch.allclose(sx, model.towers[0].represent(s_x) @ model.table(DOMAIN_X).t())

    # Training rows of X only: the Y tower gets no gradient.
    model.train()
    ex = synthetic_dataset.training_examples("last")
    keep = torch.as_tensor(ex.target_domain == DOMAIN_X).nonzero().flatten()[:32]
    out = model.loss(torch.as_tensor(ex.history)[keep], torch.as_tensor(ex.target)[keep],
                     torch.as_tensor(ex.target_domain)[keep].long(), torch.Generator().manual_seed(0))
    out["total"].backward()
    assert all(p.grad is None for p in model.towers[1].parameters())
    assert model.towers[0].embedding.item_x.grad.abs().sum() > 0


def test_sasrec_single_trains_from_its_config(synthetic_dataset, tmp_path):
    cfg = Config.from_yaml(ROOT / "configs" / "sasrec_single.yaml").with_overrides(
        {"model.dim": 16, "train.epochs": 2, "train.device": "cpu", "train.num_threads": 1})
    result = train(cfg, synthetic_dataset, out_dir=tmp_path)
    assert len(result.history) == 2 and result.history[1]["train_loss"] < result.history[0]["train_loss"]
    model, loaded, _ = load_model(tmp_path / "best.pt", synthetic_dataset)
    assert type(model) is SASRecSingle and loaded.model.name == "sasrec_single"
