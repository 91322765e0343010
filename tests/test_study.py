"""The search's persistent Optuna study (tune/study.py): its storage URL, a name already taken, lost trials."""

from __future__ import annotations

import optuna
import pytest

from tune import study as optuna_study
from tune.names import LOST_TAG


def test_default_storage_sits_beside_a_local_mlflow_store_and_urls_are_checked(tmp_path, monkeypatch):
    assert optuna_study.default_storage(f"sqlite:///{tmp_path}/mlruns/mlflow.db") == \
        f"sqlite:///{tmp_path}/mlruns/optuna.db"
    monkeypatch.chdir(tmp_path)
    assert optuna_study.default_storage("http://127.0.0.1:5000") == f"sqlite:///{tmp_path}/mlruns/optuna.db"
    with pytest.raises(optuna_study.StudyError, match="--optuna-storage .*the folder .*rel does not exist"):
        optuna_study.check_storage_url("sqlite:///rel/o.db")  # issue 42: refused, not created (as --tracking-uri)
    assert not (tmp_path / "rel").exists()
    (tmp_path / "rel").mkdir()
    assert optuna_study.check_storage_url("sqlite:///rel/o.db") == f"sqlite:///{tmp_path}/rel/o.db"
    assert optuna_study.check_storage_url("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert "p@" not in optuna_study.shown("postgresql://u:secret@h/db")
    for bad in ("mlruns/optuna.db", "redis://h", "file:///x"):
        with pytest.raises(optuna_study.StudyError, match="--optuna-storage"):
            optuna_study.check_storage_url(bad)


def test_a_new_search_refuses_a_study_of_its_name_unless_it_starts_anew(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    optuna_study.prepare_new_study(url, "s", starting_anew=False)  # none yet: fine
    optuna.create_study(study_name="s", storage=url).ask()
    with pytest.raises(optuna_study.StudyError, match="already holds a study 's'.*optuna delete-study"):
        optuna_study.prepare_new_study(url, "s", starting_anew=False)
    optuna_study.prepare_new_study(url, "s", starting_anew=True)  # a resume of a search killed before Tune saved
    assert optuna_study.load(url, "s") is None


def test_running_trials_tune_does_not_hold_are_closed_as_lost(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    kept, lost = study.ask(), study.ask()
    for t in (kept, lost):
        t.suggest_float("x", 0, 1)
    done = study.ask()
    done.suggest_float("x", 0, 1)
    study.tell(done, 0.5)
    assert optuna_study.close_lost_trials(url, "s", known_numbers=[kept.number, done.number]) == [lost.number]
    trials = {t.number: t for t in optuna_study.load(url, "s").get_trials()}
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL and LOST_TAG in \
        trials[lost.number].user_attrs
    assert trials[kept.number].state == optuna.trial.TrialState.RUNNING
    assert trials[done.number].state == optuna.trial.TrialState.COMPLETE
