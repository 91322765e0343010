"""RQ4 inside confirmations (`dpgdiff.training.loop.steps_curve`): the test pass at each K, one key per K and
metric, equal to a test pass run by hand at that K; nothing for models without a reverse process."""

from __future__ import annotations

import pytest
import torch

from dpgdiff.config import Config
from dpgdiff.models import build_model
from dpgdiff.training.loop import STEPS_CURVE_METRICS, evaluate_model, steps_curve

torch.set_num_threads(1)
TINY = {"model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1, "diffusion.steps": 4,
        "diffusion.schedule": "cosine"}


def test_each_k_is_the_test_pass_at_that_k_and_k_above_t_is_skipped(synthetic_dataset):
    config = Config().with_overrides(TINY)
    torch.manual_seed(0)
    model = build_model(config, synthetic_dataset)
    curve = steps_curve(model, synthetic_dataset, config, (1, 2, 8))
    assert {key.split("_")[1] for key in curve} == {"k1", "k2"}  # K = 8 > T = 4
    by_hand = evaluate_model(model, synthetic_dataset, "test", config, infer_steps=2)
    for metric in STEPS_CURVE_METRICS:
        assert curve[f"test_k2_y_{metric}"] == pytest.approx(by_hand.per_domain["y"][metric])


@pytest.mark.parametrize("overrides", [{"model.name": "sasrec", "model.dim": 16, "model.n_heads": 2},
                                       {**TINY, "model.diffusion": False}], ids=["sasrec", "control"])
def test_models_without_a_reverse_process_have_no_curve(synthetic_dataset, overrides):
    config = Config().with_overrides(overrides)
    assert steps_curve(build_model(config, synthetic_dataset), synthetic_dataset, config) == {}
