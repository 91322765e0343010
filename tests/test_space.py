"""Search-space YAML: the shipped spaces load, bad spaces fail before Ray with file + key + problem."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tune.space import SpaceError, load_space, parse_space

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


@pytest.mark.parametrize("name", ["smoke", "synthetic", "food_kitchen", "movie_book"])
def test_shipped_spaces_are_valid_and_cover_the_spec(name):
    space = load_space(SPACES / f"{name}.yaml")
    text = (SPACES / f"{name}.yaml").read_text()
    assert text.lstrip().startswith("#"), "every space file starts with a comment"
    assert "model.lambda_u" in space.params and space.params["model.lambda_u"].when
    if name != "smoke":
        for key in ("diffusion.steps", "diffusion.schedule", "model.dim", "loss.lambda_diff", "loss.lambda_cl",
                    "loss.lambda_s", "train.lr", "model.dropout", "model.n_enc_layers"):
            assert key in space.params, f"{name}.yaml does not search {key}"
    assert {p.type for p in space.params.values()} == {"categorical", "int", "float"} or name == "smoke"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "params, fixed, expected",
    [
        ({"model.dimm": {"type": "categorical", "values": [64]}}, {}, ["params.model.dimm", "unknown", "model.dim"]),
        ({"model.dim": {"type": "float", "low": 8, "high": 64}}, {}, ["params.model.dim", "type float", "int"]),
        ({"model.fusion": {"type": "int", "low": 1, "high": 2}}, {}, ["params.model.fusion", "type int"]),
        ({"model.fusion": {"type": "categorical", "values": ["concat", "blend"]}}, {}, ["model.fusion", "'blend'"]),
        ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}, {}, ["params.train.lr", "empty range"]),
        ({"model.dropout": {"type": "float", "low": 0.3, "high": 0.3}}, {}, ["params.model.dropout", "empty range"]),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, {}, ["params.train.lr", "bad log range"]),
        ({"model.lambda_u": {"type": "float", "low": 1e-3, "high": 1.0, "when": {"model.xt_inject": "add"}}}, {},
         ["params.model.lambda_u.when", "model.xt_inject", "not a config field"]),
        ({"model.lambda_u": {"type": "float", "low": 1e-3, "high": 1.0, "when": {"model.xt_injection": "plus"}}}, {},
         ["model.xt_injection", "'plus'"]),
        ({"model.lambda_u": {"type": "float", "low": 1e-3, "high": 1.0, "when": {"model.xt_injection": "add"}},
          "model.xt_injection": {"type": "categorical", "values": ["concat_token", "add"]}}, {},
         ["params.model.lambda_u.when", "sampled later"]),
        ({"model.dim": {"type": "categorical", "values": [30, 64]},
          "model.n_heads": {"type": "categorical", "values": [1, 4]}}, {},
         ["params.model.dim / params.model.n_heads", "model.dim=30, model.n_heads=4", "divisor"]),
        ({"model.n_heads": {"type": "categorical", "values": [1, 3]}}, {"model.dim": 64},
         ["params.model.n_heads", "model.n_heads=3", "divisor"]),
        ({"model.dropout": {"type": "float", "low": 0.1, "high": 1.0}}, {}, ["params.model.dropout", "0 <= p < 1"]),
        ({"train.epochs": {"type": "int", "low": 1, "high": 5}}, {}, ["params.train.epochs", "--epochs"]),
        ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "bounds": 3}}, {}, ["params.train.lr", "bounds"]),
        ({"train.lr": {"type": "uniform", "low": 1e-4, "high": 1e-2}}, {}, ["params.train.lr", "'uniform'"]),
        ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, {"model.nope": 1}, ["fixed.model.nope"]),
        # Schedules that never reach noise (issue 8 §2): only possible under terminal_snr=as_is, and refused there.
        ({"diffusion.steps": {"type": "categorical", "values": [32, 10]}}, {"diffusion.terminal_snr": "as_is"},
         ["params.diffusion.steps", "diffusion.steps=10", "alpha_bar_T=0.508"]),
        ({"diffusion.beta_scale": {"type": "float", "low": 0.5, "high": 2.0},
          "diffusion.steps": {"type": "categorical", "values": [32, 20]}}, {"diffusion.terminal_snr": "as_is"},
         ["diffusion.steps=20", "diffusion.beta_scale=0.5", "alpha_bar_T"]),
    ],
)
def test_bad_space_names_file_key_and_problem(tmp_path, params, fixed, expected):
    path = _write(tmp_path, {"fixed": fixed, "params": params})
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [unclosed\n")
    with pytest.raises(SpaceError, match="bad.yaml: not valid YAML"):
        load_space(bad)
    bad.write_text("parms: {}\n")
    with pytest.raises(SpaceError, match="unknown top-level key"):
        load_space(bad)


def test_define_by_run_conditionals_fixed_and_resolve():
    data = {
        "fixed": {"model.dim": 32},
        "params": {
            "model.xt_injection": {"type": "categorical", "values": ["concat_token", "add"]},
            "model.lambda_u": {"type": "float", "low": "1e-3", "high": 1.0, "log": True,  # YAML 1.1 string float
                               "when": {"model.xt_injection": "add"}},
            "diffusion.cfg_p": {"type": "categorical", "values": [0.0, 0.1]},
            "diffusion.cfg_w": {"type": "float", "low": 0.0, "high": 4.0, "when": {"diffusion.cfg_p": {"gt": 0}}},
            "model.n_enc_layers": {"type": "int", "low": 1, "high": 3},
        },
    }
    space = parse_space(data, source="inline")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(30):
        trial = study.ask()
        space(trial)
        params = trial.params
        seen.append(params)
        assert ("model.lambda_u" in params) == (params["model.xt_injection"] == "add")
        assert ("diffusion.cfg_w" in params) == (params["diffusion.cfg_p"] > 0)
        config = space.resolve(params)
        assert config.model.dim == 32 and config.model.n_enc_layers == params["model.n_enc_layers"]
        assert set(space.distributions(params)) == set(params)
        study.tell(trial, 0.0)
    assert any("model.lambda_u" in p for p in seen) and any("model.lambda_u" not in p for p in seen)
    # --set on a sampled parameter takes it out of the search; its `when` dependants follow the fixed value
    pinned = space.with_fixed({"model.xt_injection": "add"})
    assert "model.xt_injection" not in pinned.params and pinned.resolve({}).model.xt_injection == "add"
    assert "diffusion.cfg_w" not in space.with_fixed({"diffusion.cfg_p": 0.0}).params  # ruled out, not sampled
    with pytest.raises(SpaceError, match="never holds"):  # in the file itself it is a mistake
        parse_space({"fixed": {"diffusion.cfg_p": 0.0}, "params": {"diffusion.cfg_w": data["params"]["diffusion.cfg_w"]}})


def test_cpu_space_searches_the_diffusion_knobs_and_is_the_no_gpu_default():
    from tune.space_choice import default_space

    space = load_space(SPACES / "food_kitchen-cpu.yaml")
    for key in ("diffusion.steps", "diffusion.schedule", "diffusion.infer_steps", "model.x0_norm",
                "loss.lambda_diff", "loss.lambda_cl", "loss.lambda_s", "train.lr", "model.dropout"):
        assert key in space.params, f"food_kitchen-cpu.yaml does not search {key}"
    assert space.fixed["model.dim"] == 64 and space.fixed["train.epochs"] == 3
    assert default_space("food_kitchen", gpu=False).path.name == "food_kitchen-cpu.yaml"
    assert default_space("food_kitchen", gpu=True).path.name == "food_kitchen.yaml"
    assert default_space("movie_book", gpu=False).path.name == "movie_book-cpu.yaml"
    assert default_space("movie_book", gpu=True).path.name == "movie_book.yaml"
    assert default_space("synthetic", gpu=False).path.name == "synthetic.yaml"
    assert default_space("synthetic", gpu=True).path.name == "synthetic.yaml"  # CPU-sized is fine on a GPU
    for model in ("sasrec", "diffurec"):  # the baselines' spaces: the same budget
        baseline = load_space(SPACES / f"food_kitchen-cpu-{model}.yaml")
        assert baseline.fixed["model.name"] == model
        assert all(baseline.fixed[k] == space.fixed[k] for k in ("model.dim", "train.epochs", "train.mode",
                                                                 "train.batch_size"))


@pytest.mark.parametrize("name", ["food_kitchen-cpu", "movie_book-cpu", "default-cpu"])
def test_every_dpgdiff_cpu_space_searches_the_issue_23_levers_with_the_wide_lr(name):
    space = load_space(SPACES / f"{name}.yaml")
    assert set(space.params["loss.rec_timestep"].values) == {"sampled", "terminal"}
    assert set(space.params["diffusion.precond"].values) == {"none", "edm"}
    assert set(space.params["model.disentangled_encoder"].values) == {True, False}
    assert space.params["train.lr"].high == 1.0e-2
    assert space.params["model.score_alpha"].values == (0.0, 0.5, 1.0)  # α of Eq. 15, down to 0 with the guidance


def test_a_log_or_unknown_dataset_gets_the_dataset_agnostic_space_and_no_gpu_never_a_gpu_space(tmp_path):
    """A CSV log (whatever its name), a C2DSR folder or an unknown name: default-cpu.yaml / default-gpu.yaml, sized
    from the card; without a GPU, no dataset name whatever gets a space whose `hardware:` is gpu."""
    from tune.space_choice import default_space, space_hardware

    for dataset in ("my_log.csv", "logs/food_kitchen.csv", "x.parquet", str(tmp_path), "no_such_pair"):
        for gpu in (False, True):
            choice = default_space(dataset, gpu=gpu)
            assert choice.path.name == ("default-gpu.yaml" if gpu else "default-cpu.yaml"), (dataset, gpu)
            assert choice.from_card and choice.reason
    assert load_space(SPACES / "default-cpu.yaml").hardware == "cpu"
    assert load_space(SPACES / "default-gpu.yaml").hardware == "gpu"
    names = {p.stem.removesuffix("-cpu") for p in SPACES.glob("*.yaml")} | {"food_kitchen", "movie_book", "my_log.csv"}
    for name in sorted(names):
        assert space_hardware(default_space(name, gpu=False).path) == "cpu", name
    # a dataset whose only space is GPU-sized falls back to the CPU default, and says why
    (tmp_path / "big.yaml").write_text((SPACES / "movie_book.yaml").read_text())
    (tmp_path / "default-cpu.yaml").write_text((SPACES / "default-cpu.yaml").read_text())
    choice = default_space("big", gpu=False, root=tmp_path)
    assert choice.path == tmp_path / "default-cpu.yaml" and "big.yaml is GPU-sized" in choice.reason
    assert default_space("big", gpu=True, root=tmp_path).path == tmp_path / "big.yaml"
    for spec in ("item_bias", ):  # the sparse-data lever is searched in the default and CPU spaces, baselines too
        baselines = [f"food_kitchen-cpu-{m}.yaml" for m in ("sasrec", "sasrec-single", "diffurec")]
        for f in ["default-cpu.yaml", "default-gpu.yaml", "food_kitchen-cpu.yaml", "movie_book-cpu.yaml", *baselines]:
            assert set(load_space(SPACES / f).params[f"model.{spec}"].values) == {"none", "popularity"}, f


def test_hardware_must_be_cpu_or_gpu():
    with pytest.raises(SpaceError, match="hardware: 'tpu' is not one of"):
        parse_space({"hardware": "tpu", "params": {"train.lr": {"type": "float", "low": 0.001, "high": 0.01}}},
                    source="s.yaml")


def test_card_sizing_follows_examples_per_epoch_and_items():
    from types import SimpleNamespace

    from tune.space_choice import card_sizing

    small = SimpleNamespace(train_examples_prefix=90_000, train_examples_last=16_000, items_x=600, items_y=5000,
                            max_len=15)
    big = SimpleNamespace(train_examples_prefix=600_000, train_examples_last=60_000, items_x=36_845, items_y=63_937,
                          max_len=15)
    assert card_sizing(small, gpu=False) == {"train.mode": ("prefix", card_sizing(small, False)["train.mode"][1]),
                                             "eval.n_negatives": (584, card_sizing(small, False)["eval.n_negatives"][1])}
    assert card_sizing(big, gpu=False)["train.mode"][0] == "last" and "eval.n_negatives" not in card_sizing(big, False)
    assert card_sizing(big, gpu=True)["train.mode"][0] == "prefix"
