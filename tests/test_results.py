"""tune/results.py: what the parent run of a search gets from the trial rows (plots)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tune.space import load_space

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


@pytest.mark.parametrize("n_trials", [3, 10])
def test_importance_plot_only_from_enough_scored_trials(tmp_path, capsys, n_trials):
    """Optuna's parameter importances (fANOVA) on a handful of trials are noise: the parent run gets the plot
    from MIN_TRIALS_FOR_IMPORTANCES scored trials on, and below that a note says why it is missing."""
    from tune.results import METRIC, MIN_TRIALS_FOR_IMPORTANCES, _optuna_plots

    space = load_space(SPACES / "smoke.yaml")
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    rows = []
    for i in range(n_trials):
        trial = study.ask(space.distributions(space.params))
        rows.append({"trial_id": f"t{i}", "optuna_trial": i, "config": dict(trial.params), METRIC: 0.1 + 0.01 * i,
                     "status": "FINISHED"})
    _optuna_plots(tmp_path, rows, space)
    drawn = (tmp_path / "optuna_importances.png").exists()
    assert (tmp_path / "optuna_history.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn == (n_trials >= MIN_TRIALS_FOR_IMPORTANCES)
    if not drawn:
        assert f"need at least {MIN_TRIALS_FOR_IMPORTANCES} scored trials, this search has {n_trials}" in capsys.readouterr().err
