"""Issue 40: ADRec's staged training (train.init_from + train.freeze_items_epochs): the item tables stay bit-for-bit
the donor's during the frozen epochs and train after, the optimizer holds no state for them until they thaw, and
a run resumed inside the frozen stage ends exactly as an uninterrupted one. Tiny dims, CPU, synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpgdiff.config import ConfigError
from dpgdiff.models import build_model
from dpgdiff.training import train
from dpgdiff.training.loop import ITEM_TABLES, freeze_item_tables
from tests.test_levers import _donor
from tests.test_train import strip_timing, tiny

torch.set_num_threads(1)
ITEMS = ("embedding.item_x", "embedding.item_y", "embedding.bias_x", "embedding.bias_y")


def staged(donor: Path, **overrides):
    """Stage b + c: init_from the donor, tables frozen for 2 of 3 epochs, with the item bias (frozen too)."""
    return tiny(**{"train.init_from": str(donor), "train.freeze_items_epochs": 2, "train.epochs": 3,
                   "model.item_bias": "zero", "model.n_c_layers": 2, **overrides})


class Snapshots:
    """A reporter keeping, after every validation pass, the checkpoint's weights and optimizer state."""

    wants_checkpoint = True

    def __init__(self):
        self.states = {}

    def __call__(self, epoch, metrics, checkpoint_dir):
        saved = torch.load(checkpoint_dir / "model.pt", weights_only=True)
        self.states[epoch] = (saved["model"], saved["optimizer"])


@pytest.fixture
def donor(synthetic_dataset, tmp_path):
    return _donor(tmp_path, synthetic_dataset, **{"model.item_bias": "zero"})


def test_the_item_tables_stay_the_donors_while_frozen_then_train(synthetic_dataset, donor):
    donor_state = torch.load(donor, weights_only=True)["model"]
    config = staged(donor)
    names = [n for n, _ in build_model(config, synthetic_dataset).named_parameters()]
    index = {name: names.index(name) for name in ITEMS}
    snapshots = Snapshots()
    train(config, synthetic_dataset, reporter=snapshots, test=False)
    steps = -(-len(synthetic_dataset.training_examples("last")) // config.train.batch_size)

    for epoch in (1, 2):  # stage b: the tables are the donor's, bit for bit; the rest trains
        weights, optimizer = snapshots.states[epoch]
        for name in ITEMS:
            assert torch.equal(weights[name], donor_state[name]), (epoch, name)
            assert index[name] not in optimizer["state"], (epoch, name)  # no Adam moments for a frozen table
        assert not torch.equal(weights["embedding.pos.weight"], donor_state["embedding.pos.weight"])
        assert not torch.equal(weights["denoiser.encoder_c.blocks.0.qkv.weight"],
                               donor_state["transformer.blocks.0.qkv.weight"])
    weights, optimizer = snapshots.states[3]  # stage c: everything trains, Adam's moments start at the thaw
    for name in ITEMS:
        assert not torch.equal(weights[name], donor_state[name]), name
        state = optimizer["state"][index[name]]
        assert float(state["step"]) == steps and state["exp_avg"].abs().sum() > 0, name
    qkv = optimizer["state"][names.index("denoiser.encoder_c.blocks.0.qkv.weight")]
    assert float(qkv["step"]) == 3 * steps


def test_a_run_resumed_inside_the_frozen_stage_ends_as_an_uninterrupted_one(synthetic_dataset, donor, tmp_path):
    config = staged(donor)
    full = train(config, synthetic_dataset, out_dir=tmp_path / "full", test=False)
    first = train(config.with_overrides({"train.epochs": 1}), synthetic_dataset, out_dir=tmp_path / "part", test=False)
    assert len(first.history) == 1
    resumed = train(config, synthetic_dataset, resume_from=tmp_path / "part" / "checkpoint",
                    out_dir=tmp_path / "part", test=False)
    assert strip_timing(resumed.history) == strip_timing(full.history)
    final_a = torch.load(tmp_path / "full" / "checkpoint" / "model.pt", weights_only=True)
    final_b = torch.load(tmp_path / "part" / "checkpoint" / "model.pt", weights_only=True)
    for key in final_a["model"]:
        assert torch.equal(final_a["model"][key], final_b["model"][key]), key
    assert final_a["optimizer"]["state"].keys() == final_b["optimizer"]["state"].keys()


def test_freezing_needs_init_from_and_is_inert_without_it(donor):
    with pytest.raises(ConfigError, match=r"train.freeze_items_epochs=2 freezes the item tables that train.init_from "
                                          r"copies, but train.init_from is null"):
        tiny(**{"train.freeze_items_epochs": 2})
    with pytest.raises(ConfigError, match=r"train.freeze_items_epochs=-1 is out of range"):
        tiny(**{"train.init_from": str(donor), "train.freeze_items_epochs": -1})
    assert "train.freeze_items_epochs" not in tiny().fields_read()
    assert "train.freeze_items_epochs" in staged(donor).fields_read()


def test_freeze_item_tables_names_what_it_froze(synthetic_dataset):
    model = build_model(tiny(), synthetic_dataset)  # no item bias: only the two tables
    assert freeze_item_tables(model, True) == ["embedding.item_x", "embedding.item_y"]
    assert not model.embedding.item_x.requires_grad and model.embedding.pos.weight.requires_grad
    freeze_item_tables(model, False)
    assert all(p.requires_grad for p in model.parameters())
    assert set(ITEMS) == set(ITEM_TABLES)
