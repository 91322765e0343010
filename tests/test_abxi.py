"""ABXI (dpgdiff/models/abxi.py): shapes and masks, task-guided alignment, the LoRAs and the sampled InfoNCE, the
config, training through `dpgdiff.train` and the checkpoint round trip."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch

from dpgdiff.config import Config, ConfigError
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models import ABXI, build_model
from tests.test_model import fit_losses, make

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
ITEMS = ItemSpace(5, 4)  # X 1..5, Y 6..9
TINY = {"model.name": "abxi", "model.dim": 8, "model.n_heads": 2, "model.dropout": 0.0, "abxi.rd": 2,
        "abxi.ri": 2, "abxi.n_neg": 3}


def tiny(**overrides) -> ABXI:
    torch.manual_seed(0)
    return ABXI(Config().with_overrides({**TINY, **overrides}), ITEMS, 6)


def randomise_loras(model: ABXI) -> None:
    """LoRA B starts at 0 (the LoRA adds nothing); give it values so that the LoRA paths are exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" in name and name.endswith(".b"):
                p.normal_(0.0, 0.5)


def test_shapes_masks_and_an_empty_domain():
    model = tiny().eval()
    randomise_loras(model)
    history = torch.tensor([[0, 1, 6, 2], [0, 0, 7, 8], [3, 6, 4, 9]])  # row 1: no X item
    h, present = model.encode(history)
    assert h.shape == (3, 3, 8) and present.tolist() == [[True] * 3, [True, False, True], [True] * 3]
    assert torch.equal(h[1, 1], torch.zeros(8))  # s_x of row 1 is empty: h_x = 0
    for d, n in ((DOMAIN_X, 5), (DOMAIN_Y, 4)):
        scores = model.score(history, d)
        assert scores.shape == (3, n) and torch.isfinite(scores).all()
        assert torch.allclose(scores, model.score(torch.nn.functional.pad(history, (3, 0)), d), atol=1e-5)
        assert torch.allclose(scores[2:], model.score(history[2:], d), atol=1e-5)


def test_the_domain_sequence_is_the_history_subsequence_of_the_target_domain():
    """Task-guided alignment: for a target in d, h_d reads d's items of the history, whatever the last item's domain
    (the official evaluation reads padding when the last item is of the other domain)."""
    model = tiny().eval()
    a = torch.tensor([[1, 6, 2, 7]])  # X items 1, 2; last item Y
    b = torch.tensor([[6, 1, 7, 2]])  # the same X subsequence, other Y positions
    assert torch.allclose(model.encode(a)[0][1], model.encode(b)[0][1], atol=1e-6)  # h_x equal
    assert not torch.allclose(model.encode(a)[0][0], model.encode(b)[0][0], atol=1e-4)  # h_c differs


def test_loras_start_at_zero_and_the_switches_remove_them():
    model = tiny()
    h = torch.randn(4, 8)
    assert torch.equal(model.dlora["x"](h), torch.zeros(4, 8)) and torch.equal(model.ilora[0](h), torch.zeros(4, 8))
    assert all(p.abs().max() <= 0.04 for p in (model.item.weight, model.pos.weight))  # truncated N(0, 0.02)
    bare = tiny(**{"abxi.rd": 0, "abxi.ri": 0, "abxi.proj": False})
    assert bare.dlora is None and bare.ilora is None and bare.proj_i is None and bare.proj_d is None
    history, target, dom = torch.tensor([[1, 6, 2]]), torch.tensor([7]), torch.tensor([DOMAIN_Y])
    assert torch.isfinite(bare.loss(history, target, dom)["total"])


def test_sampled_infonce_masks_a_negative_equal_to_the_target_and_full_softmax_is_the_domain_ce():
    model = tiny(**{"abxi.n_neg": 50})  # 5 X items: most X negatives of an X target collide with it
    history = torch.tensor([[1, 6, 2], [0, 7, 3], [6, 1, 8]])
    target, dom = torch.tensor([4, 9, 5]), torch.tensor([DOMAIN_X, DOMAIN_Y, DOMAIN_X])
    out = model.loss(history, target, dom, torch.Generator().manual_seed(0))
    assert set(out) == {"total", "rec"} and torch.isfinite(out["total"])
    full = tiny(**{"abxi.n_neg": 0})
    full.load_state_dict(model.state_dict())
    got = full.loss(history, target, dom)["total"]
    with torch.no_grad():  # by hand: per-domain mean CE of h·E_d^T / τ
        want = 0.0
        for d in (DOMAIN_X, DOMAIN_Y):
            rows = (dom == d).nonzero()[:, 0]
            rep = full.represent(full.encode(history[rows])[0], d)
            logits = rep @ full.table(d).t() / full.temp
            want += torch.nn.functional.cross_entropy(logits, target[rows] - ITEMS.offset(d))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_build_model_reads_no_evaluation_case(synthetic_dataset):
    ds = synthetic_dataset
    cfg = Config().with_overrides({**TINY, "model.item_bias": "popularity"})
    shim = types.SimpleNamespace(items=ds.items, max_len=ds.max_len, train_sequences=ds.train_sequences,
                                 item_counts=ds.item_counts)  # no .valid / .test
    a, b = build_model(cfg, ds), build_model(cfg, shim)
    assert torch.equal(a.item_bias, b.item_bias) and a.item_bias.abs().sum() > 0


def test_config_round_trip_label_and_validation(tmp_path):
    cfg = Config.from_yaml(ROOT / "configs" / "abxi.yaml")
    a, t = cfg.abxi, cfg.train
    assert (cfg.model.dim, a.rd, a.ri, a.n_neg, a.temp) == (256, 16, 64, 128, 0.75)
    assert (t.optimizer, t.lr, t.weight_decay, t.lr_schedule) == ("adamw", 1e-4, 5.0, "plateau")
    assert cfg.label() == "ABXI"
    cfg.to_yaml(tmp_path / "a.yaml")
    assert Config.from_yaml(tmp_path / "a.yaml") == cfg
    with pytest.raises(ConfigError, match="model.name='abxi' does not read model.n_c_layers"):
        Config().with_overrides({**TINY, "model.n_c_layers": 2})
    with pytest.raises(ConfigError, match="model.name='dpgdiff' does not read abxi.rd"):
        Config().with_overrides({"abxi.rd": 4})
    for field, bad in (("abxi.temp", 0.0), ("abxi.rd", -1), ("abxi.n_neg", -2)):
        with pytest.raises(ConfigError, match=rf"{field}={bad!r} is out of range"):
            Config().with_overrides({**TINY, field: bad})


def test_a_few_steps_lower_the_loss(synthetic_dataset, batch):
    model = make(Config().with_overrides({**TINY, "model.dim": 16, "abxi.n_neg": 32}), synthetic_dataset)
    losses = fit_losses(model, batch, torch.optim.AdamW(model.parameters(), lr=1e-2), 15)
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_and_checkpoint_round_trip(synthetic_dataset, tmp_path):
    """One epoch through dpgdiff.train from the shipped config (made small), scored by the shared evaluator, sampled
    and full ranking; best.pt loads and scores as the trained model did."""
    from dpgdiff import train
    from dpgdiff.training.checkpoints import load_model

    cfg = Config.from_yaml(ROOT / "configs" / "abxi.yaml").with_overrides(
        {"model.dim": 16, "abxi.ri": 4, "train.epochs": 1, "train.lr": 1e-3, "train.device": "cpu"})
    result = train(cfg, synthetic_dataset, out_dir=tmp_path)
    assert result.best_epoch == 1 and math.isfinite(result.test["test_mrr_sum"])
    assert math.isfinite(result.test["test_y_full_mrr"])
    model, loaded_cfg, _ = load_model(tmp_path / "best.pt", synthetic_dataset)
    assert loaded_cfg == cfg and type(model) is ABXI
    from dpgdiff.training.loop import evaluate_model

    again = evaluate_model(model, synthetic_dataset, "test", loaded_cfg)
    assert again.flat("test")["test_mrr_sum"] == pytest.approx(result.test["test_mrr_sum"])
