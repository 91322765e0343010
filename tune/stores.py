"""The files a search keeps its records in: checked before they are read, built so that a kill cannot leave them
half-made, and held by one driver at a time.

- `check_sqlite_store`: a local SQLite store (MLflow's `mlruns/mlflow.db`, Optuna's `mlruns/optuna.db`) that
  exists must be a whole SQLite database that its tool finished building; otherwise `StoreError` names the file,
  what is wrong with it and what to do, and nothing is changed.
- `create_aside`: a new store is built under a temporary name beside its target, under a lock, and linked into
  place only when complete (MLflow and Optuna build their tables in many steps: a kill in the middle used to
  leave a store every later command refused with "table ... already exists").
- `hold_search`: a search's folder is held by the driver that runs it (an flock the kernel drops when that
  process dies, so a killed driver leaves no stale lock); a second driver with the same name is told who holds it.
- `parse_saved_json` / `check_types`: a resume file (dpgdiff_search.json, a confirmation's jobs) that is not JSON
  of the saved shape is named, with the key and type that are wrong.
- `local_tracking_uri`: the default MLflow store, `mlruns/mlflow.db` under the working folder.
- `check_pickle`: a pickle Tune restores (tuner.pkl) must be a whole pickle stream, checked without loading it.

Nothing here imports Ray, MLflow or Optuna.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import pickletools
import socket
import sqlite3
import tempfile
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from tune.errors import StoreError
from tune.sqlite_commits import CREATING_SUFFIX

SQLITE_HEADER = b"SQLite format 3\x00"
VERSION_TABLE = "alembic_version"  # both MLflow and Optuna record their schema's revision in it, last
LOCK_WAIT_S = 10.0  # how long a store may be locked by another process's write before that is an error
DRIVER_LOCK = ".dpgdiff_driver.lock"  # in a search's folder: held by the driver that runs the search
# What to do when a search's Tune state (tuner.pkl) cannot be restored
UNRESUMABLE = ("this search cannot be resumed; its finished trials stay in MLflow (tune/report.py --name NAME); "
               "start a new search under another --name")


def sqlite_file(url: str) -> Optional[Path]:
    """The file of a sqlite:///PATH URL (MLflow's tracking URI, Optuna's storage), None for any other URL."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_sqlite_store(path: Path, what: str, flag: str) -> None:
    """Refuse a store at `path` that exists but cannot be used: a folder, not SQLite, corrupt or truncated, locked
    by another process for more than LOCK_WAIT_S, or half-made (tables but no schema revision: a command killed
    while it created the store). No file, or an empty one, is fine: it is (re)built by `create_aside`.
    what: 'MLflow store' / 'Optuna storage'; flag: the option that points elsewhere (--tracking-uri)."""
    aside = f"move it aside (mv {path} {path}.broken) and run again to start an empty {what} there, or pass {flag} " \
            "to use another"
    if path.is_dir():
        raise StoreError(f"{path}: a folder where the {what} (a SQLite file) should be; {aside}")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"{path}: the {what} cannot be read ({exc.strerror or exc}); fix its permissions or "
                         f"pass {flag}") from None
    if header != SQLITE_HEADER:
        raise StoreError(f"{path}: not a SQLite database (the {what} is another kind of file, or its first page "
                         f"is damaged); nothing was changed. If it is yours, {aside}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            revision = conn.execute(f"SELECT * FROM {VERSION_TABLE}").fetchall() if VERSION_TABLE in tables else []
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(f"{path}: the {what} is locked by another process (for more than {LOCK_WAIT_S:g} s); "
                             "wait until the command writing to it ends, or stop it") from None
        problem = str(exc)
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem != "ok":
        raise StoreError(f"{path}: the {what} is corrupt or truncated (SQLite: {problem}); nothing was changed. "
                         f"To keep what it holds, try `sqlite3 {path} .recover | sqlite3 {path}.recovered`; "
                         f"otherwise {aside}")
    if tables and not revision:
        raise StoreError(f"{path}: a half-made {what}: it has {len(tables)} table(s) but no schema revision (a "
                         "command was stopped while it created the store; this version builds new stores aside and "
                         f"links them in when complete). It holds no runs: {aside}")


def create_aside(path: Path, build: Callable[[str], None]) -> None:
    """Make the SQLite store `path` if it does not exist (or is an empty file): `build(url)` creates its tables at
    a temporary sqlite:/// URL beside it, and the finished file is then put in place. A lock beside it makes
    concurrent creators wait for the first; a kill leaves at most an unused `.<name>.*.creating` file."""
    if path.exists() and path.stat().st_size > 0:
        return
    with _flock(path.parent / f".{path.name}.lock"):
        if path.exists() and path.stat().st_size > 0:  # another creator finished while we waited
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=CREATING_SUFFIX, dir=path.parent)
        os.close(fd)
        try:
            os.unlink(tmp)  # the tool creates the file itself
            build(f"sqlite:///{tmp}")
            if path.exists():  # an empty file (nothing in it to lose): replaced
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if a creator that takes no lock made it meanwhile: that one stays
        except FileExistsError:
            pass
        finally:
            Path(tmp).unlink(missing_ok=True)


@contextmanager
def _flock(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------- one driver per search


class SearchHold:
    """A search folder held by this process (`hold_search`); `release()` lets it go (so does the process's end)."""

    def __init__(self, fd: int, folder: Path, created: bool) -> None:
        self.fd, self.folder, self.created = fd, folder, created

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def hold_search(folder: Path, what: str = "search") -> SearchHold:
    """Create `folder` if needed and hold it for this driver (an flock on DRIVER_LOCK in it, with this process's
    PID, start time and host). StoreError when another live driver holds it, saying which; a driver that was
    killed holds nothing (the kernel drops its lock)."""
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / DRIVER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{folder}: cannot create the {what}'s folder or its lock there ({exc.strerror or exc}); "
                         "pass a --storage-path this user can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise StoreError(f"{what} {folder.name!r} is being run by another command ({holder}); wait for it to end, "
                         f"or stop it (kill {holder.split()[1].rstrip(',') if holder.startswith('PID') else 'it'}) "
                         "and resume") from None
    except OSError as exc:  # a filesystem without flock
        os.close(fd)
        raise StoreError(f"{folder}: cannot lock the {what}'s folder ({exc.strerror or exc}); use a local "
                         "--storage-path") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return SearchHold(fd, folder, created)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"PID {info['pid']}, started {info['started']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a driver that has not written its PID yet"


# ------------------------------------------------------------------------------------- saved state


def parse_saved_json(text: str, source: str, expected: type = dict) -> Any:
    """The JSON in `text` (read from `source`), which must be a `expected`; StoreError naming the file otherwise."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{source}: not valid JSON ({exc}); a resume reads this file: restore it, or start a new "
                         "search under another --name") from None
    if not isinstance(data, expected):
        raise StoreError(f"{source}: expected a JSON {'object' if expected is dict else expected.__name__}, got "
                         f"{type(data).__name__}; restore the file, or start a new search under another --name")
    return data


def check_types(data: Mapping[str, Any], cls: type, source: str) -> None:
    """Each value of `data` (a saved dataclass `cls`, before it is rebuilt) has the type its field declares
    (str, int, float, bool, Optional, tuple/list, Mapping/dict, Literal; other annotations are not checked)."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        hint = hints.get(key)
        if hint is not None and not _fits(value, hint):
            raise StoreError(f"{source}: key {key!r} is {type(value).__name__} {_short(value)}, expected "
                             f"{_hint_text(hint)}; restore the file, or start a new search under another --name")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union:
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list) or hint in (tuple, list):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        return isinstance(value, dict)
    if isinstance(hint, type):  # a dataclass (DatasetRef) is saved as its dict
        return isinstance(value, hint if hint.__module__ == "builtins" else dict)
    return True


def _hint_text(hint: Any) -> str:
    if isinstance(hint, type) and hint.__module__ != "builtins":
        return f"a JSON object ({hint.__name__})"
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_pickle(path: Path, what: str, todo: str) -> None:
    """A whole pickle stream at `path` (its opcodes walked to STOP, nothing loaded or imported); StoreError naming
    it when truncated or garbled. todo: what the user can do about it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: the {what} cannot be read ({exc.strerror or exc}); {todo}") from None
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as exc:  # noqa: BLE001  genops raises ValueError, but also others on garbage
        raise StoreError(f"{path}: the {what} is corrupt or truncated ({type(exc).__name__}: {exc}); {todo}") from None


def local_tracking_uri(root: str | Path = "mlruns") -> str:
    """sqlite:////abs/mlruns/mlflow.db (absolute, so trials and tools agree whatever their cwd)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"
