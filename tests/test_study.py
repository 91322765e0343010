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


def test_a_search_that_ends_leaves_no_trial_running_that_tune_ended(tmp_path, capsys):
    """Issue 42 §7: after a budgeted search ended, its study kept a trial RUNNING: the one at 77% of its first epoch,
    which had no result (so no config in Tune's ResultGrid row to find its Optuna number by). Every trial Tune's saved
    state has ended is closed: the budget-stopped ones COMPLETE at their best value or PRUNED without one, an errored
    one FAIL. A trial Tune holds unfinished (Ctrl-C: a resume continues it and tells its outcome) stays RUNNING."""
    from types import SimpleNamespace

    from tune.finish import report_study
    from tune.names import STOPPED_BY_TAG, TrialStatus
    from tune.trainable import OPTUNA_TRIAL_KEY

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    asked = {tid: study.ask() for tid in "abcd"}
    for trial in asked.values():
        trial.suggest_float("x", 0, 1)
    saved = [SimpleNamespace(trial_id=tid, status=status, config={OPTUNA_TRIAL_KEY: asked[tid].number})
             for tid, status in zip("abcd", ("TERMINATED", "RUNNING", "ERROR", "TERMINATED"))]
    rows = [{"trial_id": "a", "status": TrialStatus.NOT_RUN, "optuna_trial": None,
             "result": SimpleNamespace(metrics={})},
            {"trial_id": "b", "status": "RUNNING", "optuna_trial": asked["b"].number,
             "result": SimpleNamespace(metrics={"val_mrr_sum": 0.1})},
            {"trial_id": "c", "status": TrialStatus.ERROR, "optuna_trial": None, "result": SimpleNamespace(metrics={})},
            {"trial_id": "d", "status": TrialStatus.STOPPED_BY_BUDGET, "optuna_trial": asked["d"].number,
             "val_mrr_sum": 0.3, "result": SimpleNamespace(metrics={"val_mrr_sum": 0.2})}]
    settings = SimpleNamespace(optuna_storage=url, name="s", objectives=("val_mrr_sum",))
    report_study(settings, saved, rows, ended_by_budget=True)
    got = {t.number: t for t in optuna_study.load(url, "s").get_trials()}
    state = {tid: got[asked[tid].number].state for tid in "abcd"}
    assert state == {"a": optuna.trial.TrialState.PRUNED, "b": optuna.trial.TrialState.RUNNING,
                     "c": optuna.trial.TrialState.FAIL, "d": optuna.trial.TrialState.COMPLETE}, state
    assert got[asked["d"].number].value == 0.3, "the value it is selected by: its best epoch's"
    assert got[asked["a"].number].user_attrs[STOPPED_BY_TAG] == "time_budget"
    assert "optuna-dashboard" in capsys.readouterr().out


def test_the_searchers_saved_state_does_not_grow_with_the_trials_and_a_restore_reads_them_from_the_database(tmp_path):
    """Issue 41: Tune saves the searcher with every experiment snapshot. Its pickle leaves out Optuna's in-memory copy
    of the study's trials and the handles of finished trials (it grew by about 1.2 KB per trial): its size stays flat as
    trials finish, and a restored searcher still sees every trial (from the database), finishes a trial that was live
    when it was saved, and numbers the next one after them all."""
    from pathlib import Path

    from tune.results import METRIC, MODE
    from tune.space import load_space
    from tune.trainable import OPTUNA_TRIAL_KEY
    from tune.tuner import NumberedOptunaSearch

    space = load_space(Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml")
    url = f"sqlite:///{tmp_path}/optuna.db"

    def searcher(**study) -> NumberedOptunaSearch:
        return NumberedOptunaSearch(space=space, metric=METRIC, mode=MODE, **study)

    first = searcher(sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                     storage=optuna_study.open_storage(url))
    sizes = {}
    for n in range(40):
        first.suggest(f"t{n}")
        first.on_trial_result(f"t{n}", {METRIC: n / 100, "training_iteration": 1})
        first.on_trial_complete(f"t{n}", {METRIC: n / 100})
        if n + 1 in (10, 40):
            first.save(str(tmp_path / f"{n + 1}.pkl"))
            sizes[n + 1] = (tmp_path / f"{n + 1}.pkl").stat().st_size
    assert sizes[40] - sizes[10] < 30 * 100, f"{sizes}: it grows by 100 bytes or more per finished trial"
    live = first.suggest("live")
    first.save(str(tmp_path / "live.pkl"))

    restored = searcher()
    restored.restore(str(tmp_path / "live.pkl"))
    assert len(restored._ot_study.trials) == 41  # read from the database, not from the pickle
    restored.on_trial_complete("live", {METRIC: 0.99})
    assert restored.suggest("next")[OPTUNA_TRIAL_KEY] == 41
    study = optuna.load_study(study_name="s", storage=url)
    assert study.best_trial.number == live[OPTUNA_TRIAL_KEY] == 40 and study.best_value == 0.99
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 41


def test_a_restored_searcher_looks_up_only_the_trials_live_at_its_save_and_keeps_their_outcome(tmp_path):
    """Issue 41: the study is read for a trial's state only for trials that were live at the save a resume restores
    (one of them may have finished in the study before the driver was killed), once each; a searcher that was not
    restored reads nothing for it. A trial whose outcome reached the study after the save keeps that outcome when
    the resumed Tune reports it again; the other live trial is told as usual."""
    from pathlib import Path

    from tune import study as optuna_study
    from tune.results import METRIC, MODE
    from tune.space import load_space
    from tune.tuner import NumberedOptunaSearch

    space = load_space(Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml")
    url = f"sqlite:///{tmp_path}/optuna.db"
    first = NumberedOptunaSearch(space=space, metric=METRIC, mode=MODE, sampler=optuna.samplers.RandomSampler(seed=0),
                                 study_name="s", storage=optuna_study.open_storage(url))
    first.suggest("a"), first.suggest("b")
    first.save(str(tmp_path / "saved.pkl"))
    first.on_trial_result("a", {METRIC: 0.5, "training_iteration": 1})
    first.on_trial_complete("a", {METRIC: 0.5})  # then the driver is killed before Tune's next save
    assert "_live_at_save" not in first.__dict__ and not first._finished_in_study("b")

    restored = NumberedOptunaSearch(space=space, metric=METRIC, mode=MODE)
    restored.restore(str(tmp_path / "saved.pkl"))
    assert restored._live_at_save == {"a", "b"}
    restored.on_trial_result("b", {METRIC: 0.6, "training_iteration": 1})
    assert restored._live_at_save == {"a"}  # b was looked up once: unfinished, so this driver tells it
    restored.on_trial_result("a", {METRIC: 0.1, "training_iteration": 1})  # a repeated report of a finished trial
    restored.on_trial_complete("a", {METRIC: 0.1})
    restored.on_trial_complete("b", {METRIC: 0.7})
    trials = {t.number: t for t in optuna.load_study(study_name="s", storage=url).trials}
    assert [(trials[n].state, trials[n].value) for n in (0, 1)] == [(optuna.trial.TrialState.COMPLETE, 0.5),
                                                                   (optuna.trial.TrialState.COMPLETE, 0.7)]
