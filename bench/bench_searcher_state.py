"""How the searcher's saved state grows with the trials of a search (issue 41).

    python bench/bench_searcher_state.py                 # 50, 100, 200 trials
    python bench/bench_searcher_state.py --trials 100 1000

Tune saves the searcher (Optuna's study inside Ray's OptunaSearch) with every experiment snapshot, and the project
forces a snapshot in each step that adds trials (tune/ray_internals.py). This drives Ray's OptunaSearch and the
project's NumberedOptunaSearch (tune/tuner.py) alike, without Ray running: each trial is suggested (smoke space,
random sampling, a SQLite study as the search's), reports once and completes; at each count the searcher is saved
as Tune saves it and the file's bytes printed. Then a trial is suggested, the searcher saved, restored into a new
one, and the trial completed there: the study must end with every trial COMPLETE.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[50, 100, 200], help="counts at which to save")
    args = p.parse_args()

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tune import study as optuna_study
    from tune.results import METRIC, MODE
    from tune.space import load_space
    from tune.tuner import NumberedOptunaSearch

    space = load_space(REPO / "search_spaces" / "smoke.yaml")
    counts = sorted(args.trials)
    tmp = Path(tempfile.mkdtemp(prefix="searcher-state-"))
    rows = {}
    for cls in (OptunaSearch, NumberedOptunaSearch):
        url = f"sqlite:///{tmp / cls.__name__}.db"
        searcher = cls(space=space, metric=METRIC, mode=MODE, study_name="bench",
                       sampler=optuna.samplers.RandomSampler(seed=0), storage=optuna_study.open_storage(url))
        for n in range(counts[-1]):
            trial_id = f"t{n}"
            searcher.suggest(trial_id)
            searcher.on_trial_result(trial_id, {METRIC: 0.1, "training_iteration": 1})
            searcher.on_trial_complete(trial_id, {METRIC: 0.1 * (n % 7)})
            if n + 1 in counts:
                path = tmp / f"{cls.__name__}-{n + 1}.pkl"
                searcher.save(str(path))
                rows.setdefault(n + 1, {})[cls.__name__] = path.stat().st_size
        searcher.suggest("live")
        searcher.save(str(tmp / "live.pkl"))
        restored = cls(space=space, metric=METRIC, mode=MODE)
        restored.restore(str(tmp / "live.pkl"))
        restored.on_trial_complete("live", {METRIC: 0.3})
        states = [t.state for t in optuna.load_study(study_name="bench", storage=url).trials]
        assert states.count(optuna.trial.TrialState.COMPLETE) == len(states) == counts[-1] + 1, (cls, states)
    print("| trials | Ray's OptunaSearch: saved bytes | NumberedOptunaSearch: saved bytes |")
    print("|---:|---:|---:|")
    for n in counts:
        print(f"| {n} | {rows[n]['OptunaSearch']:,} | {rows[n]['NumberedOptunaSearch']:,} |")
    if len(counts) > 1:
        span = counts[-1] - counts[0]
        for name in ("OptunaSearch", "NumberedOptunaSearch"):
            print(f"{name}: {(rows[counts[-1]][name] - rows[counts[0]][name]) / span:.0f} bytes more per trial")
    print(f"(restored and completed a live trial: every study trial COMPLETE; files in {tmp})")


if __name__ == "__main__":
    main()
