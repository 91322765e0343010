"""Search settings and dataset refs: one typed path from the command line (or the resume file) to the trials."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dpgdiff.data import DataError
from dpgdiff.data.ref import DatasetRef, add_dataset_args, dataset_ref_from_args
from tune.search import build_parser
from tune.settings import SYNTHETIC_DEFAULT_OPTIONS, SearchError, SearchSettings, settings_from_args

REPO = Path(__file__).resolve().parent.parent


def _search_args(tmp: Path, *extra: str) -> argparse.Namespace:
    args = build_parser().parse_args(["--storage-path", str(tmp / "ray_results"),
                                      "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--quiet", *extra])
    args.argv = list(extra)
    return args


def test_dataset_ref_round_trips_through_json_and_keys_ignore_option_order():
    ref = DatasetRef("clicks.csv", "loo", "/data", {"domains": ("b", "a"), "max_len": 20})
    back = DatasetRef.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back == ref and back.options["domains"] == ("b", "a")
    other = DatasetRef("clicks.csv", "loo", "/data", {"max_len": 20, "domains": ("b", "a")})
    assert other.key() == ref.key() and hash(other) == hash(ref)
    assert DatasetRef("clicks.csv", "loo", "/data", {"max_len": 21}).key() != ref.key()


def test_dataset_ref_loads_and_identity_reloads_the_same_data(tmp_path):
    ref = DatasetRef("synthetic", None, str(tmp_path), {"n_users": 60, "n_items_x": 100, "n_items_y": 100})
    dataset = ref.load()
    identity = DatasetRef.identity(dataset)
    assert set(identity) == {"name", "split", "options", "fingerprint"}  # the checkpoint format's keys
    again = DatasetRef.from_identity(identity, data_dir=str(tmp_path)).load()
    assert again.fingerprint == dataset.fingerprint == identity["fingerprint"]


def test_both_command_lines_read_dataset_flags_alike():
    parser = argparse.ArgumentParser()
    add_dataset_args(parser)
    flags = ["--dataset", "synthetic", "--synthetic", "n_users=60", "--data-option", "seed=3", "--max-len", "12"]
    ref = dataset_ref_from_args(parser.parse_args(flags))
    assert ref == DatasetRef("synthetic", None, None, {"n_users": "60", "seed": 3, "max_len": 12})
    search = build_parser().parse_args(flags)
    assert dataset_ref_from_args(search) == ref


def test_data_option_without_value_names_the_flag_and_the_form():
    parser = argparse.ArgumentParser()
    add_dataset_args(parser)
    with pytest.raises(DataError, match=r"--data-option: 'n_users' must look like key=value"):
        dataset_ref_from_args(parser.parse_args(["--data-option", "n_users"]))


def test_settings_from_command_line_round_trip_through_the_resume_file(tmp_path):
    settings = settings_from_args(_search_args(tmp_path, "--name", "s1", "--epochs", "3", "--num-samples", "4"))
    assert settings.dataset == DatasetRef("synthetic", options=SYNTHETIC_DEFAULT_OPTIONS)
    assert settings.epochs == 3 and settings.fixed["train.epochs"] == 3 and settings.startup_trials == 2
    assert settings.path == f"{tmp_path / 'ray_results'}/s1" and not settings.run.resuming
    saved = json.loads(json.dumps(settings.to_saved()))
    assert "run" not in saved and saved["dataset"]["options"] == SYNTHETIC_DEFAULT_OPTIONS
    back = SearchSettings.from_saved(saved, settings.run, "test")
    assert back == settings
    assert back.space.params.keys() == settings.space.params.keys()  # rebuilt from the saved text
    with pytest.raises(AttributeError):
        back.epochs = 5  # frozen


def test_a_time_budget_without_a_trial_count_runs_trials_until_it_is_spent(tmp_path):
    from tune.budget import UNTIL_BUDGET

    assert settings_from_args(_search_args(tmp_path, "--name", "a")).num_samples == 8
    bounded = settings_from_args(_search_args(tmp_path, "--name", "b", "--time-budget", "45m"))
    assert bounded.num_samples == UNTIL_BUDGET and bounded.startup_trials == 10
    both = settings_from_args(_search_args(tmp_path, "--name", "c", "--time-budget", "45m", "--num-samples", "6"))
    assert both.num_samples == 6 and both.startup_trials == 3
    back = SearchSettings.from_saved(json.loads(json.dumps(bounded.to_saved())), bounded.run, "test")
    assert back.num_samples == UNTIL_BUDGET, "a resume keeps it"


def test_resume_file_of_the_earlier_flat_format_still_reads(tmp_path):
    settings = settings_from_args(_search_args(tmp_path, "--name", "old", "--data-dir", str(tmp_path)))
    flat = {k: v for k, v in settings.to_saved().items() if k != "dataset"}
    flat.update(dataset="synthetic", split=None, data_dir=str(tmp_path), options={"n_users": 400},
                train_fn="dpgdiff.train:train")
    back = SearchSettings.from_saved(flat, settings.run, "old file")
    assert back.dataset == DatasetRef("synthetic", None, str(tmp_path), {"n_users": 400}) and back == settings
    with pytest.raises(SearchError, match=r"old file: .*unknown keys \['surprise'\]"):
        SearchSettings.from_saved({**settings.to_saved(), "surprise": 1}, settings.run, "old file")


def test_ray_temp_dir_internal_fails_loudly_when_ray_ignores_it(monkeypatch, tmp_path):
    """Every local search goes through init_local_ray (tests/test_search.py); here: a Ray that ignores the keyword."""
    import ray

    from tune import ray_internals

    calls = []
    monkeypatch.setattr(ray, "init", lambda address=None, **kwargs: calls.append(kwargs))  # starts nothing
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    node = {"Alive": True, "NodeManagerAddress": "127.0.0.1"}
    monkeypatch.setattr(ray, "nodes", lambda: [node])
    with pytest.raises(ray_internals.RayInternalsChanged, match="_temp_dir"):
        ray_internals.init_local_ray(str(tmp_path), num_cpus=1)
    assert calls == [{"_temp_dir": str(tmp_path), "num_cpus": 1}, "shutdown"]
    (tmp_path / "session_x").mkdir()
    (tmp_path / "session_latest").symlink_to(tmp_path / "session_x")  # what Ray leaves when it honours it
    assert ray_internals.init_local_ray(str(tmp_path)) == tmp_path / "session_x"
    # a Ray that no longer honours the local-only switch: its node comes up on the machine's address
    node["NodeManagerAddress"] = "192.0.2.7"
    with pytest.raises(ray_internals.RayInternalsChanged, match="RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .*192.0.2.7"):
        ray_internals.init_local_ray(str(tmp_path))


def test_tune_is_this_projects_package_beside_ray_tune():
    import ray.tune

    import tune

    assert Path(tune.__file__).resolve().parent == REPO / "tune"
    assert ray.tune.__name__ == "ray.tune" and ray.tune is not tune


def test_saving_tunes_state_when_a_trial_is_added_fails_loudly_when_ray_changes():
    from types import SimpleNamespace

    from tune import ray_internals

    manager = SimpleNamespace(_should_force_sync_up=False)
    wrapper = SimpleNamespace(_tune_controller=SimpleNamespace(_checkpoint_manager=manager))
    ray_internals.save_state_this_step(wrapper)
    assert manager._should_force_sync_up is True
    with pytest.raises(ray_internals.RayInternalsChanged, match="_should_force_sync_up"):
        ray_internals.save_state_this_step(SimpleNamespace(_tune_controller=SimpleNamespace()))


def test_asha_cuts_at_lower_rungs_but_never_at_the_last_epoch():
    from types import SimpleNamespace

    from ray.tune.experiment import Trial

    from tune import ray_internals

    sched = ray_internals.SnapshotASHAScheduler(time_attr="epoch", metric="val", mode="max", max_t=3, grace_period=1,
                                                reduction_factor=3, stop_last_trials=False)
    controller = SimpleNamespace(_tune_controller=SimpleNamespace(
        _checkpoint_manager=SimpleNamespace(_should_force_sync_up=False)))
    trials = [Trial("__fake", trial_id=f"t{i}", stub=True) for i in range(4)]
    for t in trials:
        sched.on_trial_add(controller, t)
    decide = lambda t, epoch, val: sched.on_trial_result(controller, t, {"epoch": epoch, "val": val})  # noqa: E731
    for t, val in zip(trials[:3], (0.7, 0.8, 0.9)):  # each the best so far: above the cut (the top third)
        assert decide(t, 1, val) == sched.CONTINUE
    assert decide(trials[3], 1, 0.1) == sched.STOP  # below the epoch-1 rung's cut: stopped, as ASHA does
    assert decide(trials[2], 3, 0.9) == sched.CONTINUE
    assert decide(trials[1], 3, 0.1) == sched.CONTINUE  # below the epoch-3 cut, but that is the last epoch
    assert sched._num_stopped == 1


def test_a_resumed_tune_controller_keeps_the_stopper_it_was_built_with(monkeypatch):
    """TuneController.resume restores `_stopper` from the saved experiment state; within run_config_stopper_kept the
    controller keeps the RunConfig's stopper (the one tune/budget.py hands this driver's clock), and only there."""
    from ray.tune.execution.tune_controller import TuneController

    from tune import ray_internals

    monkeypatch.setattr(TuneController, "_create_checkpoint_manager", lambda self: None)  # no storage here

    def resumed() -> TuneController:
        controller = TuneController.__new__(TuneController)
        controller._stopper = "built with"
        controller.__setstate__({"_session_str": "s", "_start_time": 0.0, "_stopper": "saved", "_iteration": 7})
        assert controller._iteration == 7  # the rest of the saved state is restored as before
        return controller

    with ray_internals.run_config_stopper_kept():
        assert resumed()._stopper == "built with"
    assert resumed()._stopper == "saved", "Tune's own __setstate__ again outside it"


def test_saving_a_failed_trials_state_fails_loudly_when_ray_changes():
    from types import SimpleNamespace

    from ray.tune.execution.tune_controller import TuneController

    from tune import ray_internals

    assert callable(getattr(TuneController, ray_internals.MARK_FOR_SAVE, None)), "the installed Ray lacks it"
    marked, manager = [], SimpleNamespace(_should_force_sync_up=False)
    controller = SimpleNamespace(_checkpoint_manager=manager, _mark_trial_to_checkpoint=marked.append)
    ray_internals.save_trial_this_step(controller, "trial")
    assert marked == ["trial"] and manager._should_force_sync_up is True
    with pytest.raises(ray_internals.RayInternalsChanged, match="_mark_trial_to_checkpoint"):
        ray_internals.save_trial_this_step(SimpleNamespace(_checkpoint_manager=manager), "trial")


def test_a_csv_dataset_gets_the_dataset_agnostic_space_sized_from_its_card(tmp_path, capsys):
    from types import SimpleNamespace

    settings = settings_from_args(_search_args(tmp_path, "--dataset", str(tmp_path / "my_log.csv"), "--name", "csv",
                                               "--set", "eval.n_negatives=50"))
    assert settings.space_source == "search_spaces/default-cpu.yaml" and settings.size_from_card
    assert "search space search_spaces/default-cpu.yaml: " in capsys.readouterr().out
    card = SimpleNamespace(train_examples_prefix=400_000, train_examples_last=30_000, items_x=300, items_y=300,
                           max_len=15)
    sized = settings.sized_from_card(card)
    assert sized.fixed["train.mode"] == "last" and sized.space.resolve({}).train.mode == "last"
    assert sized.fixed["eval.n_negatives"] == 50, "a --set value wins over the card"
    assert "sized from the dataset card: train.mode=last" in capsys.readouterr().out
    restored = SearchSettings.from_saved(json.loads(json.dumps(sized.to_saved())), sized.run, "saved")
    assert restored.fixed == sized.fixed and restored.size_from_card
    named = settings_from_args(_search_args(tmp_path, "--dataset", "food_kitchen", "--name", "fk"))
    assert named.space_source == "search_spaces/food_kitchen-cpu.yaml" and not named.size_from_card
    assert named.sized_from_card(card) is named


def test_a_ray_auth_token_readable_by_others_is_made_owner_only(tmp_path, monkeypatch):
    """Issue 27 §6: Ray writes its auth token 0644; the search makes this user's token 0600 and says so."""
    import stat

    from tune.ray_internals import tighten_auth_token

    token = tmp_path / "auth_token"
    token.write_text("0" * 64)
    token.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    note = tighten_auth_token()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and note and str(token) in note and "0o644" in note
    assert tighten_auth_token() is None  # already private: nothing to say
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert tighten_auth_token() is None


def test_the_test_sessions_ray_token_is_owner_only(_isolated_ray_token):
    import stat

    assert stat.S_IMODE(_isolated_ray_token.stat().st_mode) == 0o600


def test_the_mlflow_ui_port_of_the_printed_links_is_a_flag_or_env_var(tmp_path, monkeypatch):
    """Issue 42 §7: the links a search prints hard-coded port 5000. --ui-port (else DPGDIFF_UI_PORT, else 5000)
    names the port, in the links and in the `mlflow ui` command printed above them, which says how to change it;
    a value that is not a port is refused naming the flag or variable."""
    from tune.finish import ui_command
    from tune.parent_run import ui_links

    monkeypatch.delenv("DPGDIFF_UI_PORT", raising=False)
    assert settings_from_args(_search_args(tmp_path)).run.ui_port == 5000
    monkeypatch.setenv("DPGDIFF_UI_PORT", "5077")
    assert settings_from_args(_search_args(tmp_path)).run.ui_port == 5077
    settings = settings_from_args(_search_args(tmp_path, "--ui-port", "8123"))  # the flag wins
    assert settings.run.ui_port == 8123
    assert "--port 8123" in ui_command(settings) and "--ui-port" in ui_command(settings)
    links = ui_links("7", "r", "s", 8123).splitlines()
    assert len(links) == 2 and all(" http://127.0.0.1:8123/#/experiments/7/runs" in line for line in links)
    for flag, value, env_value in (("--ui-port", "0", None), ("--ui-port", "70000", None), (None, None, "web")):
        if env_value:
            monkeypatch.setenv("DPGDIFF_UI_PORT", env_value)
        with pytest.raises(SearchError, match=(flag or "DPGDIFF_UI_PORT") + ".*expected a port number"):
            settings_from_args(_search_args(tmp_path, *((flag, value) if flag else ())))
