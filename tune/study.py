"""The search's Optuna study, kept in an RDB (SQLite by default) rather than only inside Ray's searcher pickle.

    optuna-dashboard sqlite:///mlruns/optuna.db               # browse every search's study
    optuna.load_study(study_name=SEARCH_NAME, storage=URL)    # the same trials, values and params as MLflow

One study per search, named as the search. The storage defaults to `optuna.db` beside a local SQLite MLflow
store (`mlruns/optuna.db`), else `./mlruns/optuna.db`; `--optuna-storage URL` (any SQLAlchemy URL Optuna's
RDBStorage takes) puts it elsewhere. Ray's OptunaSearch pickles its study with the searcher; with an RDB the
pickle holds only the URL and a cache of trials that Optuna re-reads from the database, so after a restore
the database is the one source of truth for what was sampled. What a kill can still leave there is a trial
asked after Tune's last experiment snapshot: the restored search never hears of it (its MLflow run is closed
as lost, tune/tracking.py), and `close_lost_trials` marks it FAIL with the user attribute LOST_TAG (tune/names.py).
When a driver ends, `close_ended_trials` closes the trials Tune ended without telling the searcher: a study
trial stays RUNNING only while Tune's saved state has its trial unfinished (Ctrl-C, a kill: a resume continues it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlparse

from tune.errors import StoreError
from tune.names import LOST_TAG, STOPPED_BY_TAG, STOPPED_BY_TIME_BUDGET
from tune.stores import check_sqlite_store, create_aside, sqlite_file

DB_NAME = "optuna.db"
# SQLAlchemy dialects Optuna's RDBStorage is tested with (a URL may add a driver: postgresql+psycopg2://)
DIALECTS = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


class StudyError(ValueError):
    """A bad --optuna-storage, or a study that belongs to another search."""


def default_storage(tracking_uri: str) -> str:
    """sqlite:////abs/mlruns/optuna.db beside a local SQLite MLflow store, else in ./mlruns (absolute)."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///"):]).resolve().parent
    else:
        folder = Path("mlruns").resolve()
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DB_NAME}"


def check_storage_url(url: str, flag: str = "--optuna-storage") -> str:
    """The URL, if Optuna's RDBStorage can take it (a SQLAlchemy URL of a known dialect); a relative SQLite path
    is made absolute (trials and tools may run elsewhere). Raises StudyError naming the flag."""
    scheme = urlparse(url).scheme
    if scheme.split("+")[0] not in DIALECTS or "://" not in url:
        raise StudyError(f"{flag} {url!r}: expected a database URL such as sqlite:///mlruns/{DB_NAME} or "
                         f"postgresql://host/db (dialects: {', '.join(DIALECTS)})")
    if scheme == "sqlite" and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            url = f"sqlite:///{Path(path).resolve()}"
    db = sqlite_file(url)
    if db is not None:
        if not db.parent.is_dir():
            raise StudyError(f"{flag} {url}: the folder {db.parent} does not exist; create it first (the database "
                             "file itself is created)")
        check_sqlite_store(db, "Optuna storage", flag)
    return url


def shown(url: str) -> str:
    """The URL without its password (for logs and MLflow params)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  not parseable: show the scheme only
        return f"{urlparse(url).scheme}://..."


def open_storage(url: str) -> Any:
    """optuna.storages.RDBStorage at `url` (created with its tables when new; its folder must exist). A SQLite
    storage is checked first and built aside (tune/stores.py): StoreError names one that is broken."""
    import optuna

    from tune.sqlite_commits import fast_commits

    if url.startswith("sqlite:///"):
        fast_commits()  # the study's ask, parameters, reports and tell: commits without fsync waits
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = sqlite_file(url)
    if db is None:
        return optuna.storages.RDBStorage(url)
    check_sqlite_store(db, "Optuna storage", "--optuna-storage")
    create_aside(db, optuna.storages.RDBStorage)  # Optuna builds its tables in steps: aside, then linked in
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001  SQLAlchemy's or Optuna's error: named, with what to do
        raise StoreError(f"{db}: Optuna cannot open this storage ({type(exc).__name__}: {str(exc)[:300]}); if "
                         f"another Optuna version made it, back it up and run `optuna storage upgrade --storage "
                         f"{url}`, or pass --optuna-storage to use another") from None


def study_exists(storage: Any, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def prepare_new_study(url: str, name: str, starting_anew: bool) -> Any:
    """The storage for a search that builds a new searcher. A study `name` already there belongs to another
    search of that name (StudyError), unless this is a resume of a search killed before Tune saved its first
    state (`starting_anew`): its trials start anew, and so does its study."""
    import optuna

    storage = open_storage(url)
    if study_exists(storage, name):
        if not starting_anew:
            raise StudyError(f"--name {name}: the Optuna storage {shown(url)} already holds a study {name!r} "
                             "(an earlier search of that name); pick another --name, or delete the study: "
                             f"optuna delete-study --study-name {name} --storage {shown(url)}")
        optuna.delete_study(study_name=name, storage=storage)
    return storage


def close_lost_trials(url: str, name: str, known_numbers: Iterable[int]) -> list[int]:
    """Mark FAIL (user attribute LOST_TAG) the RUNNING study trials that Tune does not hold -> their numbers.
    known_numbers: the Optuna trial numbers in Tune's trials' configs (tune.trainable.OPTUNA_TRIAL_KEY)."""
    import optuna

    known = set(known_numbers)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number in known:
            continue
        study._storage.set_trial_user_attr(trial._trial_id, LOST_TAG, "asked before the driver was killed; "
                                           "Tune's restored state does not hold it")
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        lost.append(trial.number)
    return lost


def close_ended_trials(url: str, name: str, values: dict[int, list[Optional[float]]], failed: Iterable[int] = (),
                       by_budget: bool = False) -> list[int]:
    """Close the study's RUNNING trials whose Tune trials have ended -> their numbers. Tune ends some without telling
    the searcher: those --time-budget stops (at 77% of a first epoch, or after some epochs), and those that end
    before their first result. FAIL for `failed`, COMPLETE with finite values (what they are selected by:
    val_mrr_sum at their best epoch so far), else PRUNED; `by_budget` (the budget ended the search) adds the user
    attribute dpgdiff.stopped_by=time_budget. values: Optuna trial number -> values per objective (None: no result)
    of every trial Tune's saved state has ended. A trial not in it stays RUNNING: Tune has it unfinished, and a
    resume continues it and tells its outcome (close_lost_trials closes those Tune does not hold)."""
    import optuna

    failed = set(failed)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number not in values:
            continue
        got = values[trial.number]
        if by_budget:
            study._storage.set_trial_user_attr(trial._trial_id, STOPPED_BY_TAG, STOPPED_BY_TIME_BUDGET)
        if trial.number in failed:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        elif got and all(v is not None and math.isfinite(v) for v in got):
            study.tell(trial.number, got if len(got) > 1 else got[0])
        else:
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
        closed.append(trial.number)
    return closed


def load(url: str, name: str) -> Optional[Any]:
    """The search's study, or None when the storage has none of that name."""
    import optuna

    storage = open_storage(url)
    return optuna.load_study(study_name=name, storage=storage) if study_exists(storage, name) else None
