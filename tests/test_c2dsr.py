"""C2DSR (dpgdiff/models/c2dsr.py): its graphs (from training sequences only), shapes and masks, the objective,
the config, training through `dpgdiff.train` and the checkpoint round trip."""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dpgdiff.config import Config, ConfigError
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models import C2DSR, build_model
from dpgdiff.models.c2dsr import transition_edges, transition_graphs
from tests.test_model import fit_losses, make

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model.name": "c2dsr", "model.dim": 8, "model.n_heads": 2, "model.n_c_layers": 1, "model.dropout": 0.0,
        "model.emb_dropout": 0.0}


def tiny_config(**overrides) -> Config:
    return Config().with_overrides({**TINY, **overrides})


def dense(graph) -> np.ndarray:
    index, weight = graph
    n = int(index.max()) + 1 if index.size else 0
    out = np.zeros((n, n), np.float32)
    out[index[0], index[1]] = weight
    return out


def test_transition_edges_count_consecutive_pairs_within_sequences_and_normalise_rows():
    # 0 -> 1 twice, 0 -> 2 once; 2 -> 0 once; the end of one sequence does not link to the start of the next
    index, weight = transition_edges([np.array([0, 1, 0, 2]), np.array([0, 1]), np.array([2, 0])], 3)
    got = {(int(i), int(j)): float(w) for (i, j), w in zip(index.T, weight)}
    assert got == pytest.approx({(0, 1): 2 / 3, (0, 2): 1 / 3, (1, 0): 1.0, (2, 0): 1.0})
    assert (np.diff(index[0] * 3 + index[1]) > 0).all()  # coalesced: sorted and unique
    with pytest.raises(ValueError, match="node ids outside"):
        transition_edges([np.array([0, 3])], 3)


def test_the_single_domain_graphs_link_consecutive_items_of_one_domain():
    items = ItemSpace(3, 2)  # X 1..3, Y 4..5
    graphs = transition_graphs([np.array([1, 4, 2, 5, 3])], items)
    assert {tuple(e) for e in graphs["c"][0].T.tolist()} == {(0, 3), (3, 1), (1, 4), (4, 2)}  # node = id - 1
    assert {tuple(e) for e in graphs["x"][0].T.tolist()} == {(0, 1), (1, 2)}  # X items 1 -> 2 -> 3, local
    assert {tuple(e) for e in graphs["y"][0].T.tolist()} == {(0, 1)}  # Y items 4 -> 5


def test_the_graphs_hold_training_transitions_only_never_a_validation_or_test_target(synthetic_dataset):
    """build_model reads train_sequences, nothing of the evaluation cases: a dataset without them builds the same
    graphs, and no (last history item -> held-out target) transition that training never shows is an edge."""
    ds = synthetic_dataset
    model = build_model(tiny_config(), ds)
    shim = types.SimpleNamespace(items=ds.items, max_len=ds.max_len, train_sequences=ds.train_sequences)
    again = build_model(tiny_config(), shim)  # no .valid / .test to read
    for k in ("c", "x", "y"):
        assert torch.equal(model.graphs[k].index, again.graphs[k].index)
        assert torch.equal(model.graphs[k].weight, again.graphs[k].weight)
    trained = {(int(a), int(b)) for s in ds.train_sequences for a, b in zip(s[:-1], s[1:])}
    edges = {(int(i) + 1, int(j) + 1) for i, j in model.graphs["c"].index.T}  # node = id - 1
    assert edges == trained
    held_out = {(int(h[-1]), int(t)) for split in (ds.valid, ds.test) for h, t in zip(split.history, split.target)}
    unseen = held_out - trained
    assert unseen, "the check needs evaluation transitions that training never shows"
    assert not unseen & edges
    # with the evaluation targets appended, the graph would differ: the check above can fail
    leaked = transition_graphs(list(ds.train_sequences) + [np.append(h[h > 0], t) for h, t in
                                                          zip(ds.valid.history, ds.valid.target)], ds.items)
    assert leaked["c"][0].shape[1] > model.graphs["c"].index.shape[1]


def test_shapes_masks_and_an_empty_domain():
    torch.manual_seed(0)
    items = ItemSpace(5, 4)  # X 1..5, Y 6..9
    train = [np.array([1, 6, 2, 7, 3]), np.array([4, 8, 5, 9])]
    model = C2DSR(tiny_config(), items, 6, transition_graphs(train, items)).eval()
    history = torch.tensor([[0, 1, 6, 2], [0, 0, 7, 8], [3, 6, 4, 9]])  # row 1: no X item
    for d, n in ((DOMAIN_X, 5), (DOMAIN_Y, 4)):
        scores = model.score(history, d)
        assert scores.shape == (3, n) and torch.isfinite(scores).all()
        # more left padding, or other rows in the batch, change nothing: padding is masked everywhere
        wider = model.score(torch.nn.functional.pad(history, (2, 0)), d)
        assert torch.allclose(scores, wider, atol=1e-5)
        assert torch.allclose(scores[1:2], model.score(history[1:2], d), atol=1e-5)
    out = model.train().loss(history, torch.tensor([2, 1, 7]), torch.tensor([DOMAIN_X, DOMAIN_X, DOMAIN_Y]))
    assert set(out) == {"total", "rec", "mi"} and all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    lam = model.config.c2dsr.lambda_pred
    assert out["total"].item() == pytest.approx(lam * out["rec"].item() + (1 - lam) * out["mi"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="not an item of target_domain"):
        model.loss(history, torch.tensor([7, 1, 7]), torch.tensor([DOMAIN_X, DOMAIN_X, DOMAIN_Y]))


def test_corruption_replaces_only_the_other_domain_and_the_ablations_run():
    items = ItemSpace(5, 4)
    model = C2DSR(tiny_config(), items, 6, transition_graphs([np.array([1, 6, 2])], items))
    history = torch.tensor([[0, 1, 6, 2, 7], [3, 8, 9, 4, 5]])
    gen = torch.Generator().manual_seed(0)
    keep_x = model.corrupt(history, DOMAIN_X, gen)
    is_x = (history >= 1) & (history <= 5)
    assert torch.equal(keep_x[is_x], history[is_x]) and torch.equal(keep_x == 0, history == 0)
    assert ((keep_x[~is_x & (history > 0)] >= 6) & (keep_x[~is_x & (history > 0)] <= 9)).all()
    target, dom = torch.tensor([2, 6]), torch.tensor([DOMAIN_X, DOMAIN_Y])
    no_cl = C2DSR(tiny_config(**{"c2dsr.lambda_pred": 1.0}), items, 6).loss(history, target, dom)
    assert set(no_cl) == {"total", "rec"}  # λ = 1: no infomax, no corrupted pass
    no_gnn = C2DSR(tiny_config(**{"c2dsr.gnn_layers": 0}), items, 6)
    assert len(no_gnn.propagate["c"].biases) == 0 and torch.isfinite(no_gnn.loss(history, target, dom)["total"])


def test_config_round_trip_label_and_validation(tmp_path):
    cfg = Config.from_yaml(ROOT / "configs" / "c2dsr.yaml")
    assert (cfg.model.dim, cfg.model.n_c_layers, cfg.c2dsr.gnn_layers, cfg.c2dsr.lambda_pred) == (256, 2, 1, 0.7)
    assert cfg.label() == "C2DSR"
    cfg.to_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="model.name='c2dsr' does not read diffusion.steps"):
        tiny_config(**{"diffusion.steps": 4})
    with pytest.raises(ConfigError, match="model.name='sasrec' does not read c2dsr.gnn_layers"):
        Config().with_overrides({"model.name": "sasrec", "c2dsr.gnn_layers": 2})
    with pytest.raises(ConfigError, match=r"c2dsr.lambda_pred=0.0 is out of range"):
        tiny_config(**{"c2dsr.lambda_pred": 0.0})
    with pytest.raises(ConfigError, match=r"c2dsr.gnn_layers=-1 is out of range"):
        tiny_config(**{"c2dsr.gnn_layers": -1})


def test_a_few_steps_lower_the_loss(synthetic_dataset, batch):
    model = make(tiny_config(**{"model.dim": 16}), synthetic_dataset)
    losses = fit_losses(model, batch, torch.optim.Adam(model.parameters(), lr=3e-3), 15)
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_and_checkpoint_round_trip(synthetic_dataset, tmp_path):
    """One epoch through dpgdiff.train, scored by the shared evaluator; best.pt scores the same without the data."""
    from dpgdiff import train
    from dpgdiff.training.checkpoints import load_model

    cfg = tiny_config(**{"train.epochs": 1, "train.batch_size": 256, "model.item_bias": "popularity",
                         "train.device": "cpu"})
    result = train(cfg, synthetic_dataset, out_dir=tmp_path)
    assert result.best_epoch == 1 and math.isfinite(result.test["test_mrr_sum"])
    assert math.isfinite(result.test["test_x_full_mrr"])  # full ranking too
    # the id-map shell that serving loads with (dpgdiff/recommend.py): no training sequences, the graphs come
    # from best.pt
    ds = synthetic_dataset
    shell = types.SimpleNamespace(items=ds.items, max_len=ds.max_len, train_sequences=[], name=ds.name,
                                  split=ds.split, fingerprint=ds.fingerprint)
    served, _, _ = load_model(tmp_path / "best.pt", shell)
    loaded, _, _ = load_model(tmp_path / "best.pt", ds)
    assert served.graphs["c"].index.shape[1] == build_model(cfg, ds).graphs["c"].index.shape[1] > 0
    history = torch.as_tensor(ds.test.history[:32])
    for d in (DOMAIN_X, DOMAIN_Y):
        assert torch.equal(served.score(history, d), loaded.score(history, d))


def test_item_bias_picks_how_the_output_bias_starts(synthetic_dataset):
    """C2DSR's output layers always have a bias (the official nn.Linear); model.item_bias sets its start:
    zero, or the centred log-popularity (build_model), and every score moves by exactly b_j."""
    ds = synthetic_dataset
    zero = build_model(tiny_config(**{"model.item_bias": "zero"}), ds)
    assert all(torch.equal(zero.bias(d), torch.zeros_like(zero.bias(d))) for d in (DOMAIN_X, DOMAIN_Y))
    model = build_model(tiny_config(**{"model.item_bias": "popularity"}), ds).eval()
    counts = ds.item_counts()
    history = torch.as_tensor(ds.test.history[:8])
    for d in (DOMAIN_X, DOMAIN_Y):
        lo = ds.items.offset(d)
        prior = np.log1p(counts[lo:lo + ds.items.n_items(d)])
        assert torch.allclose(model.bias(d).detach(), torch.as_tensor(prior - prior.mean(), dtype=torch.float32))
        before = model.score(history, d)
        with torch.no_grad():
            model.bias(d).add_(1.5)
        assert torch.allclose(model.score(history, d) - before, torch.full_like(before, 1.5), atol=1e-4)
