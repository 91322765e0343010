"""The search driver: `run_search(settings)` loads the data, starts Ray, runs the Tuner, reports the result.

Steps: build the space (errors before Ray starts), load the dataset once for its card and
fingerprint, start or join Ray (building a new local MLflow store meanwhile) and check that a trial
fits on a node (tune/ray_start.py), save the settings (new search), open the MLflow parent run
(tune/parent_run.py), build or restore the Tuner (tune/tuner.py), start this driver's --time-budget
clock and hand it to what reads it (tune/budget.py), fit, then end the search (tune/finish.py): test
the best trial, print its config and per-domain validation and test metrics, attach the best
checkpoint, summary tables and Optuna plots to the parent run, and, with two objectives, print and tag
the Pareto front. Returns an exit code (tune/names.py's EXIT_*).
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import ray

import dpgdiff
from tune import budget, ray_internals, stores, tracking
from tune import study as optuna_study
from tune.finish import finish, report_study
from tune.names import ERROR_TAG, EXIT_OK
from tune.parent_run import finished_already, open_parent_run
from tune.ray_start import check_resources, start_ray
from tune.results import tune_trials
from tune.errors import StoreError
from tune.settings import STATE_FILE, SearchError, SearchSettings
from tune.space import SearchSpace
from tune.storage import write_text
from tune.tuner import build_tuner, restore_saved_state


def run_search(settings: SearchSettings, train_fn: Optional[Callable[..., Any]] = None) -> int:
    """Run (or resume) the search `settings` describes -> exit code.

    train_fn: what each trial calls, with `dpgdiff.train`'s signature and Reporter contract
    (default `dpgdiff.train`); tests pass stand-ins here. It is not saved: pass it again to resume.
    """
    if settings.run.resuming:
        finished = finished_already(settings)
        if finished:  # resuming a FINISHED search rewrites nothing (issue 27 §2)
            print(finished, flush=True)
            return EXIT_OK
    hold = hold_search_folder(settings)  # one driver per search, from before it writes anything
    try:
        return _run_held(settings, train_fn, hold)
    finally:
        if hold is not None:
            hold.release()


def hold_search_folder(settings: SearchSettings) -> Optional[stores.SearchHold]:
    """Hold the search's folder for this driver (tune/stores.py; a URI storage is not held) and check what a
    resume reads there; StoreError (exit 2) when another driver runs the search or its state is broken."""
    if "://" in settings.path:
        return None
    hold = stores.hold_search(Path(settings.path))
    try:
        state = Path(settings.path, STATE_FILE)
        if not settings.run.resuming and state.exists():  # written since this command looked (another driver)
            raise SearchError(f"search {settings.name!r} was started by another command meanwhile ({state}); run "
                              "this command again to resume it, or pick another --name")
        if restore_saved_state(settings):
            stores.check_pickle(Path(settings.path, "tuner.pkl"), "Tune state (tuner.pkl)", stores.UNRESUMABLE)
        if settings.optuna_storage:
            optuna_study.check_storage_url(settings.optuna_storage)
    except BaseException:
        hold.release()
        raise
    return hold


def _run_held(settings: SearchSettings, train_fn: Optional[Callable[..., Any]],
              hold: Optional[stores.SearchHold]) -> int:
    new = not settings.run.resuming
    if new:  # at once: a driver killed from here on leaves a search that --resume starts anew under its name
        save_settings(settings)
    try:  # 1. everything that can be wrong with the input is found before Ray starts
        space = settings.space
        print(space.summary(), flush=True)
        if settings.optuna_storage and not restore_saved_state(settings):  # a new searcher: a new study
            try:
                optuna_study.prepare_new_study(settings.optuna_storage, settings.name,
                                               starting_anew=settings.run.resuming)
            except optuna_study.StudyError as exc:
                raise SearchError(str(exc)) from None
        t0 = time.time()  # 2. the dataset, once on the driver: its card goes to MLflow, its fingerprint to every trial
        dataset = settings.dataset.load()
        card = dataset.card()
        print(f"\n{card}\n(loaded in {time.time() - t0:.1f} s)\n", flush=True)
        if settings.fingerprint and settings.fingerprint != dataset.fingerprint:
            raise SearchError(f"the dataset changed since search {settings.name!r} started (fingerprint "
                              f"{settings.fingerprint[:12]} -> {dataset.fingerprint[:12]}); start a new search")
        first_save = settings.fingerprint is None  # new, or saved by a driver killed before it loaded the data
        settings = settings.with_dataset(dataset).sized_from_card(card, sized_already=not first_save)
        space = settings.space
        check_negatives(space, dataset)  # every trial would fail at its first validation pass
        if first_save:
            save_settings(settings)  # with the dataset's fingerprint and the card's sizes
        # A new local MLflow store takes seconds to build (its schema migrations): build it while Ray starts.
        store_built = in_background(tracking.create_sqlite_store, settings.tracking_uri)
    except Exception:
        if new:
            forget_new_search(settings, hold)
        raise
    temp_dir = start_ray(settings)  # 3. Ray: local (no dashboard) or an existing cluster
    try:
        try:
            slots = check_resources(ray, settings)  # a trial that cannot fit is an error now
            store_built.result()  # its error, if any, is raised here
        except Exception:
            if new:
                forget_new_search(settings, hold)
            raise
        parent = open_parent_run(settings, space, card)  # 4. MLflow parent run (reopened on resume)
        try:  # 5. Tune
            tuner = build_tuner(settings, space, parent, train_fn or dpgdiff.train, slots=slots)
            print(f"\nsearch {settings.name!r}: {budget.planned_text(settings.num_samples)}, results in "
                  f"{settings.path}" + (" (resumed)" if settings.run.resuming else ""), flush=True)
            t_fit = time.time()
            budget.record_driver(settings.path, t_fit)  # search_wall_s sums the drivers' times (a resume's included)
            spent = budget.search_wall_s(settings.path)
            clock = budget.start_clock(settings.time_budget_s, spent, settings.run.started)  # None without a budget
            # to the hooks Tune runs (a resume's, unpickled from the first driver's tuner.pkl) and the driver's tracker
            budget.give_clock(clock, ray_internals.run_config(tuner), parent.tracker)
            with ray_internals.run_config_stopper_kept():  # a resume's stopper too: the one handed the clock
                results = tuner.fit()
            budget.record_driver(settings.path, t_fit, time.time() - t_fit)
            wall = budget.search_wall_s(settings.path)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            if ray_internals.experiment_state_saved(settings.path):
                try:  # a second Ctrl-C skips Tune's own ending: close the trials' runs by Tune's saved state
                    saved = tune_trials(settings.path)
                    parent.tracker.reconcile(saved)
                    if settings.optuna_storage:  # and the study's trials that Tune ended (tune/study.py)
                        report_study(settings, saved, [])
                except Exception:  # noqa: BLE001  the parent's status below still says what happened
                    pass
            parent.client.set_tag(parent.run_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
            parent.client.set_terminated(parent.run_id, status=status)
            if ray_internals.experiment_state_saved(settings.path) and not isinstance(exc, StoreError):
                print(f"\nSearch {settings.name!r} stopped on {type(exc).__name__}; its state is saved. Resume it "
                      f"with:\n    python tune/search.py --name {settings.name} --storage-path "
                      f"{settings.run.storage} --resume", file=sys.stderr, flush=True)
            raise
        return finish(results, settings, space, parent, wall, dataset, clock)
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def save_settings(settings: SearchSettings) -> None:
    """The resume file (STATE_FILE) of the search, written atomically."""
    write_text(f"{settings.path}/{STATE_FILE}", json.dumps(settings.to_saved(), indent=1))


def forget_new_search(settings: SearchSettings, hold: Optional[stores.SearchHold]) -> None:
    """A new search refused before it started (bad input, no room for a trial, a broken store): remove the resume
    file it wrote, and its folder if this driver made it and nothing else is in it, so that the same command,
    fixed, starts a new search and is not taken for a resume of this one."""
    if hold is None:
        return
    Path(settings.path, STATE_FILE).unlink(missing_ok=True)
    if hold.created and {p.name for p in Path(settings.path).iterdir()} <= {stores.DRIVER_LOCK}:
        hold.release()
        shutil.rmtree(settings.path, ignore_errors=True)


def check_negatives(space: SearchSpace, dataset: Any) -> None:
    """The largest eval.n_negatives the space can give a trial must leave room in every validation and test case
    (dpgdiff.evaluation.check_candidate_room raises DataError, exit 2, before Ray starts)."""
    from dpgdiff.evaluation import check_candidate_room

    param = space.params.get("eval.n_negatives")
    if param is None:
        wanted, source = int(space.base_values()["eval.n_negatives"]), f"{space.source}: eval.n_negatives"
    else:
        wanted = int(max(param.values) if param.type == "categorical" else param.high)
        source = f"{space.source}: eval.n_negatives (sampled, up to)"
    check_candidate_room(dataset, wanted, source)


def in_background(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """fn(*args) in a thread of its own -> its Future (`.result()` waits and re-raises its error)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=getattr(fn, "__name__", "task"))
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)  # the thread ends with fn; the interpreter waits for it at exit
