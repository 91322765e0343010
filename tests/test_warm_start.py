"""--warm-start: the first trials of a search run the best configurations of an earlier one (tune/warmstart.py)."""

from __future__ import annotations

import json

import pytest

from dpgdiff.config import Config
from tests.test_search_helpers import REPO, mlflow_runs, run, search_args
from tune.space import load_space
from tune.warmstart import WarmStartError, config_file_point, map_onto_space


def test_an_earlier_config_is_mapped_onto_the_new_space_clipped_skipped_and_said():
    space = load_space(REPO / "search_spaces" / "smoke.yaml")  # train.lr in [1e-3, 1e-2] log; dim in {16, 32}
    config = {"train.lr": 0.05, "model.dim": 64, "model.n_heads": 2, "model.dropout": 0.1, "loss.cl_tau": 0.3,
              "diffusion.schedule": "cosine", "model.name": "dpgdiff"}
    skipped: dict[str, None] = {}
    params, notes = map_onto_space(config, ["train.lr", "model.dim", "loss.cl_tau", "model.dropout"], space, skipped)
    assert params == {"train.lr": 0.01, "model.n_heads": 2, "model.dropout": 0.1, "diffusion.schedule": "cosine"}
    assert list(skipped) == ["loss.cl_tau"], "only the keys the earlier search sampled are named"
    assert any("train.lr=0.05 is outside" in n and "clipped to 0.01" in n for n in notes), notes
    assert any("model.dim=64 is not one of [16, 32]" in n for n in notes), notes


def test_a_config_file_is_one_warm_start_point_and_its_other_settings_are_named(tmp_path):
    """The committed Food-Kitchen config into the Food-Kitchen CPU space: each sampled key takes the file's value,
    and the settings the space fixes otherwise (the file trains 6 epochs with patience 2) are said."""
    space = load_space(REPO / "search_spaces" / "food_kitchen-cpu.yaml")
    path = REPO / "configs" / "food_kitchen-cpu" / "dpgdiff.yaml"
    said: list[str] = []
    point = config_file_point(str(path), space, said.append)
    assert point["search"] == str(path) and point["run_id"] is None
    committed = Config.from_yaml(path)
    assert point["params"]["train.lr"] == pytest.approx(committed.train.lr)
    assert point["params"]["diffusion.steps"] == committed.diffusion.steps
    assert point["params"]["model.item_bias"] == committed.model.item_bias
    assert point["params"]["loss.rec_timestep"] == committed.loss.rec_timestep
    assert set(point["params"]) == set(space.params), "every key of this space is set in the committed file"
    assert "train.epochs=6" in said[-1] and "train.patience=2" in said[-1], said
    assert "model.dim" not in said[-1], "a setting equal to the space's is not named"

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: dpgdiff\n  dimm: 64\n")
    with pytest.raises(WarmStartError, match=r"bad.yaml.*dimm"):
        config_file_point(str(bad), space, said.append)
    with pytest.raises(WarmStartError, match="no such config file"):
        config_file_point(str(tmp_path / "nosuch.yaml"), space, said.append)


@pytest.mark.slow
def test_warm_start_trials_carry_exactly_the_earlier_best_configurations(tmp_path):
    first = run(search_args(tmp_path, "earlier", "--epochs", "1", "--num-samples", "3", "--scheduler", "fifo",
                            "--seed", "5", "--set", "model.xt_injection=concat_token"), tmp_path, timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    _, earlier = mlflow_runs(tmp_path, "earlier")
    best = sorted(earlier, key=lambda r: r.data.metrics["best_val_mrr_sum"], reverse=True)[:2]

    # the new search fixes model.dropout, so that key of the earlier configurations is skipped and named
    second = run(search_args(tmp_path, "later", "--epochs", "1", "--num-samples", "3", "--scheduler", "fifo",
                             "--seed", "6", "--set", "model.xt_injection=concat_token", "--set", "model.dropout=0.25",
                             "--warm-start", "earlier", "--warm-start-k", "2"), tmp_path, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "warm start: the best 2 configuration(s) of search 'earlier'" in second.stdout
    assert "skipped: model.dropout" in second.stdout
    _, later = mlflow_runs(tmp_path, "later")
    warm = sorted((r for r in later if r.data.tags.get("dpgdiff.warm_start") == "earlier"),
                  key=lambda r: int(r.data.tags["dpgdiff.optuna_trial"]))
    assert [int(r.data.tags["dpgdiff.optuna_trial"]) for r in warm] == [0, 1], "the first trials, in rank order"
    for new, old in zip(warm, best):
        expected = {k: v for k, v in json.loads(old.data.tags["dpgdiff.sampled"]).items() if k != "model.dropout"}
        assert json.loads(new.data.tags["dpgdiff.sampled"]) == expected
    cold = [r for r in later if "dpgdiff.warm_start" not in r.data.tags]
    assert len(cold) == 1, "the other trial is sampled as usual"
    missing = run(search_args(tmp_path, "x", "--warm-start", "nosuch"), tmp_path, timeout=120)
    assert missing.returncode == 2 and "--warm-start nosuch: no search 'nosuch'" in missing.stderr, missing.stderr
    no_file = run(search_args(tmp_path, "y", "--warm-start", "nosuch.yaml"), tmp_path, timeout=120)
    assert no_file.returncode == 2 and "--warm-start nosuch.yaml: no such config file" in no_file.stderr


def test_a_restored_searcher_runs_the_warm_starts_once(tmp_path):
    """A resume gets its searcher back from Tune's saved state (the pickled searcher, then its saved __dict__), so
    the warm-start configurations are enqueued once, by the first driver: after a restore, the one not yet run is
    next, and none comes twice."""
    import pickle
    from types import SimpleNamespace

    import optuna

    from tune.tuner import _searcher
    from tune.trainable import OPTUNA_TRIAL_KEY, WARM_START_KEY

    space = load_space(REPO / "search_spaces" / "smoke.yaml")
    points = [{"search": "earlier", "run_id": f"r{i}", "value": 0.3 - i / 10,
               "params": {"model.dim": 16, "train.lr": lr, "model.xt_injection": "concat_token"}}
              for i, lr in enumerate((0.002, 0.005))]
    url = f"sqlite:///{tmp_path}/optuna.db"
    settings = SimpleNamespace(seed=1, startup_trials=2, objectives=("val_mrr_sum",), optuna_storage=url,
                               name="s", warm_start=tuple(points))
    first = _searcher(settings, space)
    pickled_at_start = pickle.dumps(first)  # what Tune writes into tuner.pkl
    config = first.suggest("t1")
    assert config[WARM_START_KEY] == "earlier" and config["train.lr"] == 0.002 and config[OPTUNA_TRIAL_KEY] == 0
    first.save(str(tmp_path / "searcher.pkl"))  # what Tune saves with its experiment state

    restored = pickle.loads(pickled_at_start)
    restored.restore(str(tmp_path / "searcher.pkl"))
    second, third = restored.suggest("t2"), restored.suggest("t3")
    assert second[WARM_START_KEY] == "earlier" and second["train.lr"] == 0.005
    assert WARM_START_KEY not in third, "the warm starts are used up: the sampler proposes the rest"
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.user_attrs.get("dpgdiff.warm_start") for t in study.get_trials()] == ["earlier", "earlier", None]
