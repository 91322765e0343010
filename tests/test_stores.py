"""Issue 42: stores that a kill cannot leave half-made, broken stores named (file, what is wrong, what to do) with
nothing changed, and a search folder held by one driver at a time. No Ray here: tune/stores.py, and the MLflow
and Optuna stores opened through tune/tracking.py and tune/study.py."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.busy import scaled
from tune import stores
from tune.errors import SearchError, StoreError


def _mlflow_store(path: Path, template: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(template.read_bytes())
    return path


@pytest.fixture
def broken_stores(tmp_path: Path, _empty_mlflow_store: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of broken SQLite store -> (its path, a fragment its error must hold)."""
    folder = tmp_path / "folder" / "mlflow.db"
    folder.mkdir(parents=True)
    text = tmp_path / "text" / "mlflow.db"
    text.parent.mkdir()
    text.write_text("not a database\n")
    truncated = _mlflow_store(tmp_path / "truncated" / "mlflow.db", _empty_mlflow_store)
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 3])
    garbled = _mlflow_store(tmp_path / "garbled" / "mlflow.db", _empty_mlflow_store)
    data = bytearray(garbled.read_bytes())
    data[4096:12288] = os.urandom(8192)  # pages after the first: the header reads fine, the tables do not
    garbled.write_bytes(bytes(data))
    half = tmp_path / "half" / "mlflow.db"  # what an in-place creation killed before its schema revision leaves
    half.parent.mkdir()
    with sqlite3.connect(half) as conn:
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE spans (id INTEGER PRIMARY KEY)")
    return {"folder": (folder, "a folder where"), "text": (text, "not a SQLite database"),
            "truncated": (truncated, "corrupt or truncated"), "garbled": (garbled, "corrupt or truncated"),
            "half-made": (half, "half-made")}


KINDS = ("folder", "text", "truncated", "garbled", "half-made")


@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_mlflow_store_is_named_and_left_as_it_is(kind, broken_stores):
    from tune import tracking

    path, fragment = broken_stores[kind]
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StoreError) as err:
        tracking.client_for(f"sqlite:///{path}")
    message = str(err.value)
    assert str(path) in message and fragment in message and "MLflow store" in message, message
    assert "mv " in message or "sqlite3 " in message, f"no step to take: {message}"
    assert (path.read_bytes() if path.is_file() else None) == before, "the error path changed the store"
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlflow.db"], "something was written beside it"


@pytest.mark.parametrize("kind", ("text", "truncated", "half-made"))
def test_a_broken_optuna_storage_is_named_and_left_as_it_is(kind, broken_stores):
    from tune import study

    path, fragment = broken_stores[kind]
    before = path.read_bytes()
    for call in (lambda: study.check_storage_url(f"sqlite:///{path}"), lambda: study.open_storage(f"sqlite:///{path}")):
        with pytest.raises(StoreError, match="Optuna storage") as err:
            call()
        assert str(path) in str(err.value) and fragment in str(err.value)
    assert path.read_bytes() == before


def test_a_store_locked_by_another_process_is_named(tmp_path, _empty_mlflow_store, monkeypatch):
    path = _mlflow_store(tmp_path / "mlflow.db", _empty_mlflow_store)
    monkeypatch.setattr(stores, "LOCK_WAIT_S", 0.5)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another process"):
            stores.check_sqlite_store(path, "MLflow store", "--tracking-uri")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    stores.check_sqlite_store(path, "MLflow store", "--tracking-uri")  # free again: fine


def test_a_store_is_built_aside_and_a_failed_build_leaves_nothing(tmp_path):
    """`create_aside` links only a finished store into place: a build that dies (a kill, here an exception) leaves
    no file under the store's name and no temporary file; an empty file in its place is replaced."""
    target = tmp_path / "optuna.db"

    def dies(url: str) -> None:
        sqlite3.connect(url[len("sqlite:///"):]).execute("CREATE TABLE half (x)").connection.commit()
        raise KeyboardInterrupt  # as a signal would, mid-build

    with pytest.raises(KeyboardInterrupt):
        stores.create_aside(target, dies)
    assert not target.exists() and not list(tmp_path.glob("*.creating")), list(tmp_path.iterdir())
    target.write_bytes(b"")  # what `sqlite3 optuna.db` with no statement leaves
    import optuna

    stores.create_aside(target, optuna.storages.RDBStorage)
    stores.check_sqlite_store(target, "Optuna storage", "--optuna-storage")
    assert target.stat().st_size > 0 and not list(tmp_path.glob("*.creating"))


def test_concurrent_first_time_creation_makes_one_whole_store(tmp_path):
    """Two processes creating the same new MLflow store at once (two searches, or a search and a report): both
    succeed and the store is whole (the race used to leave "table ... already exists")."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    code = ("import sys; from tune import tracking; c = tracking.client_for(sys.argv[1]); "
            "print(len(c.search_experiments()))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{db}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=scaled(600)) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    stores.check_sqlite_store(db, "MLflow store", "--tracking-uri")
    assert not list(db.parent.glob("*.creating"))


def test_a_search_folder_is_held_by_one_driver_and_a_killed_one_holds_nothing(tmp_path):
    folder = tmp_path / "ray_results" / "s1"
    hold = stores.hold_search(folder)
    assert hold.created and (folder / stores.DRIVER_LOCK).is_file()
    with pytest.raises(StoreError) as err:  # another open of the lock file: as a second driver's
        stores.hold_search(folder)
    message = str(err.value)
    assert f"PID {os.getpid()}" in message and "started 20" in message and f"kill {os.getpid()}" in message, message
    assert isinstance(err.value, SearchError)  # exit 2 in every command
    hold.release()
    stores.hold_search(folder).release()  # released: free

    code = f"from tune import stores; import pathlib, time; stores.hold_search(pathlib.Path({str(folder)!r})); " \
           "print('held', flush=True); time.sleep(600)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"PID {proc.pid},"):
            stores.hold_search(folder)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    again = stores.hold_search(folder)  # the kernel dropped the killed driver's lock: nothing stale
    assert not again.created
    again.release()


def test_a_search_folder_that_cannot_be_made_is_named():
    with pytest.raises(StoreError, match="/proc/no/search.*cannot create"):
        stores.hold_search(Path("/proc/no/search"))


@pytest.mark.parametrize("text, fragments", [
    ("{not json", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["expected a JSON object", "got list"]),
    ('{"dataset": 5}', ["key 'dataset' is int 5", "a JSON object (DatasetRef)"]),
    ('{"num_samples": "8"}', ["key 'num_samples' is str \"8\"", "expected int"]),
    ('{"scheduler": "bogus"}', ["key 'scheduler'", "Literal['asha', 'fifo']"]),
    ('{"dataset": {"name": "synthetic", "options": 3}}', ["a saved value cannot be read"]),
])
def test_malformed_search_settings_are_named_with_the_key(text, fragments, tmp_path):
    """dpgdiff_search.json as a resume reads it (issue 42 §4: it used to raise AttributeError 'int' object has no
    attribute 'get'): StoreError naming the file and the key, for bad JSON and for wrong types."""
    from tests.test_search_helpers import search_args
    from tune.search import build_parser
    from tune.settings import STATE_FILE, settings_from_args

    argv = search_args(tmp_path, "bad", "--epochs", "1")[2:]
    args = build_parser().parse_args(argv)
    args.argv = argv
    good = settings_from_args(args).to_saved()
    folder = tmp_path / "ray_results" / "bad"
    folder.mkdir(parents=True)
    try:
        patch = json.loads(text)
        content = json.dumps({**good, **patch}) if isinstance(patch, dict) else text
    except ValueError:
        content = text
    (folder / STATE_FILE).write_text(content)
    args = build_parser().parse_args([*argv, "--resume"])
    with pytest.raises(StoreError) as err:
        settings_from_args(args)
    for fragment in [str(folder / STATE_FILE), *fragments]:
        assert fragment in str(err.value), str(err.value)
    assert (folder / STATE_FILE).read_text() == content


def test_a_truncated_pickle_is_named_without_loading_it(tmp_path):
    path = tmp_path / "tuner.pkl"
    whole = pickle.dumps({"a": list(range(100))})
    path.write_bytes(whole)
    stores.check_pickle(path, "Tune state", "do X")
    path.write_bytes(whole[:-20])
    with pytest.raises(StoreError, match=r"tuner.pkl: the Tune state is corrupt or truncated .*; do X"):
        stores.check_pickle(path, "Tune state", "do X")


def test_patient_node_start_polls_past_rays_own_wait(monkeypatch):
    """Ray's node start gives up after 30 s (issue 42 §2, under load); within `patient_node_start` its poll keeps
    trying for the given time, and is back to Ray's own once it ends."""
    from ray._private import services

    from tune import ray_internals

    calls = []

    def not_yet(*args):
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise RuntimeError("node not registered")
        return {"node": args}

    monkeypatch.setattr(services, "get_node", not_yet)
    with ray_internals.patient_node_start(30):
        assert services.get_node("gcs", "id") == {"node": ("gcs", "id")}
    assert len(calls) == 4 and services.get_node is not_yet
    calls.clear()
    with ray_internals.patient_node_start(0.2):
        with pytest.raises(RuntimeError):  # past its time: Ray's own loop then raises its timeout
            services.get_node("gcs", "id")


def _search_whose_ray_never_starts(tmp_path, monkeypatch) -> tuple:
    """A search's settings and the temp folders of its Ray starts, each of which times out as Ray's does."""
    from tests.test_search_helpers import search_args
    from tune import ray_internals, ray_start
    from tune.search import build_parser
    from tune.settings import settings_from_args

    argv = search_args(tmp_path, "s", "--epochs", "1")[2:]
    args = build_parser().parse_args(argv)
    args.argv = argv
    tries = []

    def times_out(temp_dir, **kwargs):
        tries.append(temp_dir)
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray_internals, "init_local_ray", times_out)
    monkeypatch.setattr(ray_start, "_stop_failed_start", lambda: None)
    monkeypatch.setenv(ray_start.START_WAIT_ENV, "45")
    return settings_from_args(args), tries


def test_a_local_ray_that_does_not_start_is_tried_once_more_then_named(monkeypatch, capsys, tmp_path):
    from tune import ray_start

    settings, tries = _search_whose_ray_never_starts(tmp_path, monkeypatch)
    with pytest.raises(SearchError) as err:
        ray_start.start_ray(settings)
    assert len(tries) == 2 and tries[0] == tries[1] and not Path(tries[0]).exists()  # its temp folder removed
    message = str(err.value)
    assert "did not start, twice" in message and "within 45 s" in message and "load average" in message
    assert f"{ray_start.START_WAIT_ENV}=90" in message and "Traceback" not in message
    assert "trying once more" in capsys.readouterr().out


def test_a_busy_machine_gives_the_local_ray_longer_to_start(monkeypatch):
    """Issue 42 §2: the wait for a local Ray's node grows with the load per CPU (a start took over 120 s at a load
    of 25 on 2 cores), within bounds; DPGDIFF_RAY_START_S sets it, and a bad value is named."""
    from tune import ray_start

    monkeypatch.delenv(ray_start.START_WAIT_ENV, raising=False)
    monkeypatch.setattr(ray_start.os, "cpu_count", lambda: 2)
    for load, expected in ((0.5, 120.0), (2.0, 120.0), (5.0, 300.0), (25.0, ray_start.START_WAIT_MAX_S)):
        monkeypatch.setattr(ray_start.os, "getloadavg", lambda load=load: (load, load, load))
        assert ray_start.start_wait_s() == expected, load
    monkeypatch.setenv(ray_start.START_WAIT_ENV, "45")
    assert ray_start.start_wait_s() == 45.0
    for bad in ("soon", "0", "-3", "nan"):
        monkeypatch.setenv(ray_start.START_WAIT_ENV, bad)
        with pytest.raises(SearchError, match=rf"\${ray_start.START_WAIT_ENV}='{bad}': expected the seconds"):
            ray_start.start_wait_s()


def test_a_raylet_that_exits_during_start_ends_the_wait(monkeypatch, tmp_path):
    """Under load Ray's raylet aborts when its agents are slow to write their port files, and its node never
    registers: the start-up wait notices the exited raylet (a child process named raylet, not reaped) and gives up
    at once instead of waiting its whole time; a raylet that had exited before the start is not counted."""
    import shutil
    import subprocess

    from ray._private import services

    from tune import ray_internals, ray_start

    fake = tmp_path / "raylet"  # the process name (/proc/PID/comm) is the file's name
    shutil.copy(shutil.which("true"), fake)
    older = subprocess.Popen([str(fake)])
    try:
        while older.pid not in ray_start._exited_raylets():
            time.sleep(0.05)
        raylet_exited = ray_start._watch_raylet()
        assert not raylet_exited(), "a raylet that exited before the start counts"
        newer = subprocess.Popen([str(fake)])  # not waited for: a zombie child, as Ray's exited raylet is
        deadline = time.time() + 60
        while not raylet_exited() and time.time() < deadline:
            time.sleep(0.05)
        assert raylet_exited()

        def never(*args):
            raise RuntimeError("node not registered")

        monkeypatch.setattr(services, "get_node", never)
        t0 = time.monotonic()
        with ray_internals.patient_node_start(600, hopeless=raylet_exited):
            with pytest.raises(RuntimeError):
                services.get_node("gcs", "id")
        assert time.monotonic() - t0 < 30, "the wait went on after the raylet exited"
        newer.wait()
    finally:
        older.wait()


def test_a_raylet_that_keeps_exiting_is_started_again_up_to_max_starts(monkeypatch, capsys, tmp_path):
    """A raylet that exits during start-up (a busy machine) is tried again, not just once more, up to MAX_STARTS
    within two full waits; then the named error says how many times and why."""
    from tune import ray_start

    settings, tries = _search_whose_ray_never_starts(tmp_path, monkeypatch)
    monkeypatch.setattr(ray_start, "_watch_raylet", lambda: (lambda: True))  # each start's raylet exited
    with pytest.raises(SearchError) as err:
        ray_start.start_ray(settings)
    assert len(tries) == ray_start.MAX_STARTS
    message = str(err.value)
    assert f"did not start, {ray_start.MAX_STARTS} times: its raylet exited during start-up" in message, message
    assert ray_start.START_WAIT_ENV not in message, "a longer wait would not help: not suggested"
    assert capsys.readouterr().out.count("trying once more") == ray_start.MAX_STARTS - 1
