"""Training loop: accuracy against popularity, determinism, exact resume, NaN handling, reporter, early stopping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import dpgdiff
from dpgdiff.baselines import PopularityScorer
from dpgdiff.config import Config, ConfigError, model_reads
from dpgdiff.evaluation import Evaluator
from dpgdiff.training import TrainingDivergedError, load_model, train
from dpgdiff.training import loop as train_mod  # the loop's module, for monkeypatching

# Timing entries differ between otherwise identical runs.
TIMING_KEYS = ("train_seconds", "examples_per_second", "infer_ms")


def tiny(**overrides) -> Config:
    """A config small enough for a few seconds per run on one core."""
    base = {
        "model.dim": 16, "model.n_heads": 2, "model.n_c_layers": 1,
        "diffusion.steps": 32, "diffusion.sampler": "ddim", "diffusion.infer_steps": 2,
        "diffusion.val_infer_steps": 2,
        "train.batch_size": 256, "train.epochs": 2, "train.eval_every": 1, "train.patience": 0,
        "train.device": "cpu", "train.num_threads": 1, "train.seed": 3, "train.mode": "last",
    }
    base.update(overrides)
    name = base.get("model.name", "dpgdiff")
    return Config().with_overrides({k: v for k, v in base.items() if k in overrides or model_reads(name, k)})


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_exported_from_package():
    assert dpgdiff.train is train
    assert issubclass(dpgdiff.TrainingDivergedError, RuntimeError)


# A synthetic set where popularity carries no signal (flat popularity, no noise clicks) but each
# user's topics do: a model that learns from the history must beat popularity by a wide margin.
# A mean-of-history-embeddings model reaches ~3.7x popularity's MRR sum here in 5 epochs.
LEARNABLE_OPTIONS = dict(n_users=1000, n_items_x=300, n_items_y=300, zipf=0.0, noise=0.0, seed=7)


@pytest.fixture(scope="module")
def learnable_dataset(synthetic_data_dir):
    from dpgdiff.data import load_dataset

    return load_dataset("synthetic", data_dir=synthetic_data_dir, **LEARNABLE_OPTIONS)


def test_full_model_beats_popularity_by_a_wide_margin(learnable_dataset):
    config = tiny(**{"model.dim": 32, "train.epochs": 3, "train.lr": 3e-3, "train.batch_size": 128,
                     "train.mode": "prefix", "diffusion.infer_steps": 4, "eval.n_negatives": 99})
    result = train(config, learnable_dataset)
    pop = Evaluator(learnable_dataset, "test", config.eval).evaluate(PopularityScorer(learnable_dataset))
    assert result.test["test_mrr_sum"] > 2.0 * pop.mrr_sum, (result.test["test_mrr_sum"], pop.mrr_sum)


def test_same_seed_gives_identical_metrics(synthetic_dataset):
    config = tiny()
    a, b = train(config, synthetic_dataset), train(config, synthetic_dataset)
    assert strip_timing(a.history) == strip_timing(b.history)
    assert a.test == b.test
    c = train(tiny(**{"train.seed": 4}), synthetic_dataset)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]  # the seed matters


def test_resume_equals_uninterrupted_run(synthetic_dataset, tmp_path):
    config = tiny(**{"train.epochs": 3, "train.patience": 1})
    full = train(config, synthetic_dataset, out_dir=tmp_path / "full")

    first = train(config.with_overrides({"train.epochs": 1}), synthetic_dataset, out_dir=tmp_path / "part")
    assert len(first.history) == 1
    resumed = train(config, synthetic_dataset, resume_from=tmp_path / "part" / "checkpoint",
                    out_dir=tmp_path / "part")

    assert strip_timing(resumed.history) == strip_timing(full.history)
    assert resumed.test == full.test and resumed.best_epoch == full.best_epoch
    final_a = torch.load(tmp_path / "full" / "checkpoint" / "model.pt", weights_only=True)["model"]
    final_b = torch.load(tmp_path / "part" / "checkpoint" / "model.pt", weights_only=True)["model"]
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key


def test_resume_refuses_a_different_config(synthetic_dataset, tmp_path):
    train(tiny(**{"train.epochs": 1}), synthetic_dataset, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="train.lr"):
        train(tiny(**{"train.lr": 0.01}), synthetic_dataset, resume_from=tmp_path / "checkpoint")


def test_resume_from_a_checkpoint_written_when_item_bias_was_a_bool(synthetic_dataset, tmp_path):
    # Checkpoints from before `model.item_bias` became none|zero|popularity say False / True.
    train(tiny(**{"train.epochs": 1}), synthetic_dataset, out_dir=tmp_path)
    file = tmp_path / "checkpoint" / "model.pt"
    state = torch.load(file, weights_only=True)
    assert state["config"]["model"]["item_bias"] == "none"
    state["config"]["model"]["item_bias"] = False
    torch.save(state, file)
    resumed = train(tiny(**{"train.epochs": 2}), synthetic_dataset, resume_from=tmp_path / "checkpoint")
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    state["config"]["model"]["item_bias"] = True  # a learned bias from zero: not this run's config
    torch.save(state, file)
    with pytest.raises(ConfigError, match="model.item_bias: checkpoint 'zero' vs given 'none'"):
        train(tiny(**{"train.epochs": 2}), synthetic_dataset, resume_from=tmp_path / "checkpoint")


def test_nan_loss_raises_and_keeps_the_last_checkpoint(synthetic_dataset, tmp_path, monkeypatch):
    real_build = train_mod.build_model
    steps_per_epoch = math.ceil(len(synthetic_dataset.training_examples("last")) / 256)

    def build_with_nan(config, dataset):
        model = real_build(config, dataset)
        real_loss, calls = model.loss, {"n": 0}

        def loss(*args, **kwargs):
            out = real_loss(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == steps_per_epoch + 2:  # epoch 2, step 2
                out = dict(out, total=out["total"] * float("nan"))
            return out

        model.loss = loss
        return model

    monkeypatch.setattr(train_mod, "build_model", build_with_nan)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 2") as info:
        train(tiny(**{"train.epochs": 3}), synthetic_dataset, out_dir=tmp_path)
    assert "checkpoint" in str(info.value)
    monkeypatch.undo()

    state = torch.load(tmp_path / "checkpoint" / "model.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    model, config, info = load_model(tmp_path / "best.pt", synthetic_dataset)
    assert info["epoch"] == 1 and config.model.dim == 16
    # train's output folder stands for its best.pt (what a user passes to evaluate/diagnose --checkpoint).
    assert load_model(tmp_path, synthetic_dataset)[2]["epoch"] == 1
    # The run can go on from the intact checkpoint.
    resumed = train(tiny(**{"train.epochs": 2}), synthetic_dataset, resume_from=tmp_path / "checkpoint")
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_huge_learning_rate_diverges_with_a_clear_error(synthetic_dataset):
    config = tiny(**{"train.lr": 1e30, "train.epochs": 1, "loss.lambda_cl": 0.0})
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step \d+"):
        train(config, synthetic_dataset)


class RecordingReporter:
    def __init__(self, wants_checkpoint: bool) -> None:
        self.wants_checkpoint = wants_checkpoint
        self.calls: list[tuple[int, dict, Path | None]] = []
        self.checkpoint_files: list[set[str]] = []

    def __call__(self, epoch, metrics, checkpoint_dir):
        self.calls.append((epoch, metrics, checkpoint_dir))
        if checkpoint_dir is not None:  # the callee may only rely on it during the call
            self.checkpoint_files.append({p.name for p in Path(checkpoint_dir).iterdir()})
            torch.load(Path(checkpoint_dir) / "model.pt", weights_only=True)


def test_reporter_receives_documented_keys_and_checkpoints(synthetic_dataset):
    reporter = RecordingReporter(wants_checkpoint=True)
    result = train(tiny(**{"train.epochs": 2}), synthetic_dataset, reporter=reporter)
    assert [c[0] for c in reporter.calls] == [1, 2]
    metrics = reporter.calls[0][1]
    for key in ("epoch", "train_loss", "val_mrr_sum", "val_x_mrr", "val_y_mrr", "val_x_ndcg10",
                "val_y_hr10", "val_x_full_ndcg10", "val_y_full_mrr"):
        assert key in metrics, key
    assert any(k.startswith("train_") and k != "train_loss" and k not in TIMING_KEYS for k in metrics)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert all(k.replace("_", "").isalnum() and k == k.lower() for k in metrics)  # MLflow-safe
    assert reporter.checkpoint_files == [{"model.pt", "config.yaml"}] * 2
    assert result.history == [c[1] for c in reporter.calls]
    assert set(result.test) >= {"test_mrr_sum", "test_x_mrr", "test_y_full_ndcg10"}

    quiet = RecordingReporter(wants_checkpoint=False)
    train(tiny(**{"train.epochs": 1}), synthetic_dataset, reporter=quiet)
    assert quiet.calls[0][2] is None


def test_early_stopping_keeps_and_tests_the_best_state(synthetic_dataset, tmp_path, monkeypatch):
    real_evaluate = train_mod.evaluate_model
    val_scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])  # best at epoch 2, then 2 passes without gain
    tested: list[dict] = []

    def fake_evaluate(model, dataset, which, config, **kw):
        result = real_evaluate(model, dataset, which, config, **kw)
        if which == "valid":
            result.mrr_sum = next(val_scores)
        else:
            tested.append({k: v.clone() for k, v in model.state_dict().items()})
        return result

    monkeypatch.setattr(train_mod, "evaluate_model", fake_evaluate)
    result = train(tiny(**{"train.epochs": 6, "train.patience": 2}), synthetic_dataset, out_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    for key, value in best["model"].items():  # the test pass ran on the epoch-2 weights
        assert torch.equal(tested[0][key], value), key


def test_test_false_skips_the_test_pass_and_infer_ms_is_timed(synthetic_dataset, tmp_path, monkeypatch):
    """A search trial (train(test=False)) never touches the test cases; every validation pass is timed."""
    real_evaluate = train_mod.evaluate_model
    passes: list[str] = []

    def recording_evaluate(model, dataset, which, config, **kw):
        passes.append(which)
        return real_evaluate(model, dataset, which, config, **kw)

    monkeypatch.setattr(train_mod, "evaluate_model", recording_evaluate)
    result = train(tiny(), synthetic_dataset, out_dir=tmp_path, test=False)
    assert passes == ["valid", "valid"] and result.test == {} and result.test_result is None
    assert (tmp_path / "best.pt").is_file() and not (tmp_path / train_mod.RANKS_FILE).exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == {}
    assert all(h["infer_ms"] > 0 for h in result.history)


def test_eval_every_and_last_epoch(synthetic_dataset):
    result = train(tiny(**{"train.epochs": 3, "train.eval_every": 2, "train.mode": "last"}), synthetic_dataset)
    assert [h["epoch"] for h in result.history] == [2, 3]


def test_checkpoint_of_other_data_is_refused(synthetic_dataset, tmp_path):
    train(tiny(**{"train.epochs": 1, "train.mode": "last"}), synthetic_dataset, out_dir=tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    best["dataset"]["fingerprint"] = "0" * 64
    torch.save(best, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="fingerprint"):
        load_model(tmp_path / "other.pt", synthetic_dataset)


def test_example_configs_are_valid():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("**/*.yaml"))
    assert {p.name for p in configs} >= {"paper.yaml", "cpu-small.yaml"}
    # the study's committed configurations (tune/confirm.py --write-configs): one per model, at CPU size
    study = {p.stem: Config.from_yaml(p) for p in configs if p.parent.name == "food_kitchen-cpu"}
    assert set(study) == {"dpgdiff", "dpgdiff-full", "sasrec", "sasrec_single", "diffurec", "abxi"}
    assert all(c.model.name == name.removesuffix("-full") and c.model.dim == 64 for name, c in study.items())
    for path in configs:
        Config.from_yaml(path)
    paper = Config.from_yaml(configs[0].with_name("paper.yaml"))
    assert (paper.model.dim, paper.train.batch_size, paper.train.epochs) == (512, 512, 100)


def test_bf16_autocast_trains(synthetic_dataset):
    result = train(tiny(**{"train.precision": "bf16", "train.epochs": 1}), synthetic_dataset)
    assert math.isfinite(result.history[0]["train_loss"]) and math.isfinite(result.test["test_mrr_sum"])
