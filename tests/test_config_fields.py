"""Each model reads only its own fields (issue 37): config files list exactly those, others are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dpgdiff.config import MODEL_FIELDS, Config, ConfigError, model_reads

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_config_holds_only_fields_its_model_reads(path):
    raw = yaml.safe_load(path.read_text())
    config = Config.from_yaml(path)
    listed = {f"{section}.{key}" for section, values in raw.items() for key in values}
    assert listed <= set(config.fields_read()), sorted(listed - set(config.fields_read()))


def test_the_baselines_files_have_no_diffusion_or_augment_section():
    for name in ("sasrec", "sasrec_single"):
        raw = yaml.safe_load((ROOT / f"configs/food_kitchen-cpu/{name}.yaml").read_text())
        assert not {"diffusion", "augment"} & set(raw), name
    assert "loss" not in yaml.safe_load((ROOT / "configs/food_kitchen-cpu/diffurec.yaml").read_text())


def test_a_field_the_model_never_reads_is_refused_naming_field_and_model(tmp_path):
    path = tmp_path / "sasrec.yaml"
    path.write_text("model:\n  name: sasrec\ndiffusion:\n  steps: 10\n")
    with pytest.raises(ConfigError, match=r"sasrec.yaml: model.name='sasrec' does not read diffusion.steps"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match=r"--set: model.name='sasrec' does not read augment.crop_eta"):
        Config().with_overrides(["model.name=sasrec", "augment.crop_eta=0.5"])
    # the same field is the model's own under DPG-Diff
    assert Config().with_overrides(["diffusion.steps=10"]).diffusion.steps == 10


def test_a_runs_config_yaml_from_an_earlier_version_listing_every_field_loads_with_the_unread_ones_dropped(tmp_path):
    """Runs logged before issue 37's files (and search trials until issue 40) wrote `to_dict`: every field. The
    downloaded file must train again with `--config`; a file with one or a few stray fields is still refused."""
    config = Config().with_overrides({"model.name": "sasrec", "train.lr": 0.007, "model.item_bias": "popularity"})
    dump = config.to_dict()
    del dump["loss"]["lambda_prefer"]  # a field added since: absent from the older file
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dump))
    again = Config.from_yaml(path)
    assert again == config and again.label() == "SASRec"
    assert again.diffusion == Config().diffusion  # unread: back to the defaults
    path.write_text("model:\n  name: sasrec\ndiffusion:\n  steps: 10\n  schedule: cosine\naugment:\n  crop_eta: 0.5\n")
    with pytest.raises(ConfigError, match=r"does not read diffusion.steps, diffusion.schedule, augment.crop_eta"):
        Config.from_yaml(path)


@pytest.mark.parametrize("name", sorted(MODEL_FIELDS))
def test_to_yaml_writes_what_the_model_reads_and_reads_back_the_same(name, tmp_path):
    config = Config().with_overrides({"model.name": name, "model.dim": 32, "train.lr": 0.003})
    config.to_yaml(tmp_path / "c.yaml", header="# a header\n")
    text = (tmp_path / "c.yaml").read_text()
    assert text.startswith("# a header\n")
    again = Config.from_yaml(tmp_path / "c.yaml")
    assert again == config
    written = {f"{s}.{k}" for s, values in yaml.safe_load(text).items() for k in values}
    assert all(model_reads(name, field) for field in written)
    if name != "dpgdiff":
        assert not any(field.startswith(("augment.", "diffusion.cfg")) for field in written)


def test_fields_switched_off_by_another_are_left_out_of_the_file():
    """Without the disentangled encoder the guidance fields do nothing; without the diffusion the chain's."""
    minus_de = Config().with_overrides({"model.disentangled_encoder": False})
    assert not {"model.guidance", "model.fusion", "model.score_alpha", "loss.lambda_s"} & set(minus_de.fields_read())
    control = Config().with_overrides({"model.diffusion": False})
    assert not {"diffusion.steps", "diffusion.sampler", "loss.lambda_diff"} & set(control.fields_read())
    assert {"diffusion.cfg_p", "model.score_alpha"} <= set(control.fields_read())  # the memory is still there


def test_saved_configs_of_every_field_still_load():
    """Checkpoints and a search's state written before issue 37 list every field for every model: they load,
    the unread ones dropped."""
    saved = Config().to_dict()
    saved["model"]["name"] = "sasrec"
    saved["diffusion"]["steps"] = 7  # unread by SASRec: no effect, dropped
    config = Config.from_saved(saved)
    assert config.model.name == "sasrec" and config.diffusion.steps == Config().diffusion.steps



def test_labels_say_which_dpgdiff_a_configuration_is():
    root = ROOT / "configs/food_kitchen-cpu"
    assert Config.from_yaml(root / "dpgdiff.yaml").label() == "DPG-Diff (−DE)"
    assert Config.from_yaml(root / "dpgdiff-full.yaml").label() == "DPG-Diff (full)"
    assert Config().with_overrides({"model.diffusion": False}).label() == "DPG-Diff (−Diffusion)"
    assert Config().with_overrides({"model.name": "sasrec_single"}).label() == "SASRec-single"
    # issue 40's options, when on, are named after the components
    assert Config().with_overrides({"loss.lambda_prefer": 1.0}).label() == "DPG-Diff (full, +PreferDiff)"
    staged = {"train.init_from": "stage-a/best.pt", "train.freeze_items_epochs": 1, "model.disentangled_encoder": False}
    assert Config().with_overrides(staged).label() == "DPG-Diff (−DE, +staged)"
    # the committed files' first line names the variant by the same label
    for name in ("dpgdiff", "dpgdiff-full"):
        first = (root / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith(f"# variant: {Config.from_yaml(root / f'{name}.yaml').label()[:-1]}"), first


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_search_space_resolves_trials_of_its_own_model(path):
    """A trial's config is the space's fixed and sampled values on the defaults: defaults the model never
    reads are not "set" by the space (a SASRec search must not be refused for DPG-Diff's defaults)."""
    import optuna

    from tune.space import load_space

    space = load_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        space(trial)
        config = space.resolve(dict(trial.params))
        assert config.model.name == space.base_values()["model.name"]


def test_a_space_that_sets_a_field_its_model_never_reads_is_refused_by_name(tmp_path):
    from tune.space import SpaceError, load_space

    path = tmp_path / "space.yaml"
    path.write_text("fixed:\n  model.name: sasrec\n  diffusion.steps: 10\nparams:\n"
                    "  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    with pytest.raises(SpaceError, match=r"space.yaml: fixed.diffusion.steps: model.name='sasrec' does not read"):
        load_space(path)
