"""Issue 42 §4-6: what search, --resume, confirm, report and the dpgdiff commands refuse, each with a named error
and exit 2, before Ray starts and with nothing intact changed: a search name another driver holds, broken saved
state on --resume, tracking URIs nothing (or something else) answers at, a Ray --address that is not Ray (or 'auto'
with no cluster), an s3:// --storage-path whose endpoint does not answer, names and numbers out of range.

The search rows call `tune.search.main` in this process: none of them gets as far as `ray.init`."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_search_helpers import search_args
from tune import stores
from tune.names import EXIT_USAGE

DEAD = "http://127.0.0.1:1"  # nothing answers there


def _search(tmp: Path, name: str, *extra: str) -> list[str]:
    return search_args(tmp, name, "--epochs", "1", "--num-samples", "2", *extra)[2:]  # without the interpreter


def _refused(main, argv: list[str], capsys, *fragments: str) -> str:
    """main(argv) exits 2 within a minute, with no traceback and a last stderr line holding every fragment."""
    t0 = time.time()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err[-3000:]
    assert time.time() - t0 < 60 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized(), "Ray was started before the refusal"
    return message


def _saved_search(tmp: Path, name: str) -> Path:
    """A search folder as a driver leaves it after Tune's first state: the settings, Tune's state and tuner.pkl."""
    from tune.search import build_parser
    from tune.settings import STATE_FILE, settings_from_args

    argv = _search(tmp, name)
    args = build_parser().parse_args(argv)
    args.argv = argv
    settings = settings_from_args(args)
    folder = Path(settings.path)
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps(settings.to_saved()))
    (folder / "experiment_state-2025-01-01_00-00-00.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(pickle.dumps({}))  # a whole pickle (what is in it is Tune's to check)
    return folder


@pytest.fixture
def no_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_TMPDIR"):
        monkeypatch.delenv(var, raising=False)


def test_a_second_driver_of_a_search_is_told_who_holds_it(tmp_path, capsys, no_env):
    """Issue 42 §6: two searches with one --name used to merge into one MLflow parent and Tune folder."""
    from tune.search import main

    folder = _saved_search(tmp_path, "held")
    hold = stores.hold_search(folder)
    try:
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        _refused(main, [*_search(tmp_path, "held"), "--resume"], capsys, "search 'held' is being run by another "
                 f"command (PID {os.getpid()}, started", f"kill {os.getpid()}")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    finally:
        hold.release()


def test_a_corrupt_tuner_pkl_is_named_and_not_called_resumable(tmp_path, capsys, no_env):
    from tune.search import main

    folder = _saved_search(tmp_path, "pkl")
    (folder / "tuner.pkl").write_bytes(b"\x80\x05\x95garbage")
    message = _refused(main, [*_search(tmp_path, "pkl"), "--resume"], capsys,
                       f"{folder}/tuner.pkl: the Tune state (tuner.pkl) is corrupt or truncated",
                       "cannot be resumed", "another --name")
    assert "Resume it with" not in message and (folder / "tuner.pkl").read_bytes() == b"\x80\x05\x95garbage"


@pytest.mark.parametrize("store", ["mlflow.db", "optuna.db"])
def test_a_resume_with_a_corrupt_store_is_named(store, tmp_path, capsys, no_env, _empty_mlflow_store):
    from tune.search import main

    _saved_search(tmp_path, "db")
    path = tmp_path / "mlruns" / store
    path.write_bytes(b"SQLite format 3\x00" + b"\x01" * 5000)  # the header of one, then garbage
    message = _refused(main, [*_search(tmp_path, "db"), "--resume"], capsys, str(path))
    assert ("corrupt or truncated" in message or "not a SQLite database" in message), message
    assert path.read_bytes() == b"SQLite format 3\x00" + b"\x01" * 5000


def test_a_new_search_refused_in_the_driver_leaves_no_folder_to_be_taken_for_a_resume(tmp_path, capsys, no_env):
    """The driver saves a new search's settings at once (a kill then leaves a search --resume starts anew); one it
    refuses (here: an Optuna study of its name exists) takes them back, so the fixed command starts a new search."""
    import optuna

    from tune.search import main

    (tmp_path / "mlruns").mkdir()
    optuna.create_study(study_name="taken", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    _refused(main, _search(tmp_path, "taken"), capsys, "already holds a study 'taken'")
    assert not (tmp_path / "ray_results" / "taken").exists()


def test_a_stage_a_checkpoint_that_trials_cannot_open_is_refused_before_any_trial(tmp_path, capsys, no_env):
    """train.init_from is opened by every trial, in its own folder: a relative or missing path would fail all of
    them after Ray started (it did: issue 40's first staged search); the driver refuses it first."""
    from tune.search import main

    _refused(main, _search(tmp_path, "rel", "--set", "train.init_from=runs/stage-a/best.pt"), capsys,
             "--set train.init_from='runs/stage-a/best.pt'", "give an absolute path")
    missing = tmp_path / "stage-a" / "best.pt"
    _refused(main, _search(tmp_path, "gone", "--set", f"train.init_from={missing}"), capsys,
             f"--set train.init_from='{missing}'", "no such file")
    assert not [name for name in ("rel", "gone") if (tmp_path / "ray_results" / name).exists()]


def test_ray_tmpdir_too_long_for_rays_sockets_is_refused(tmp_path, capsys, no_env, monkeypatch):
    from tune.search import main

    monkeypatch.setenv("RAY_TMPDIR", "/tmp/" + "r" * 40)
    _refused(main, _search(tmp_path, "sock"), capsys, "$RAY_TMPDIR /tmp/rrrr", "over the 107 bytes",
             "RAY_TMPDIR=/tmp")


@pytest.fixture
def not_mlflow():
    """An HTTP server on 127.0.0.1 that is not MLflow (404 and HTML for everything), stopped after the test."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>not here</html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_mlflow_is_refused_by_protocol(tmp_path, capsys, no_env, not_mlflow):
    from tune.search import main

    _refused(main, [*_search(tmp_path, "web"), "--tracking-uri", not_mlflow], capsys,
             f"--tracking-uri {not_mlflow}", "answers, but not as MLflow", "HTTP 404")


@pytest.mark.parametrize("uri, fragment", [(DEAD, "no MLflow server answers at 127.0.0.1:1"),
                                           ("foo://bar", "unknown tracking URI scheme 'foo'")])
def test_report_and_confirm_check_the_tracking_uri_as_search_does(uri, fragment, tmp_path, capsys, no_env,
                                                                  monkeypatch):
    """They used to retry an unreachable server for 260-270 s, then print a traceback (issue 42 §5)."""
    from tune import confirm, report

    monkeypatch.chdir(tmp_path)
    _refused(report.main, ["--tracking-uri", uri], capsys, f"--tracking-uri {uri}", fragment)
    _refused(confirm.main, ["--name", "x", "--tracking-uri", uri, "--storage-path", str(tmp_path / "r")], capsys,
             f"--tracking-uri {uri}", fragment)


def test_report_top_and_confirm_name_are_checked(tmp_path, capsys, no_env, monkeypatch, mlflow_store):
    from tune import confirm, report

    monkeypatch.chdir(tmp_path)
    _refused(report.main, ["--tracking-uri", mlflow_store, "--top", "-1"], capsys, "--top -1: must be >= 1")
    _refused(confirm.main, ["--name", "x", "--tracking-uri", mlflow_store, "--confirm-name", "../escape",
                            "--storage-path", str(tmp_path / "r")], capsys, "--confirm-name '../escape'",
             "a search name is 1 to 100 characters")
    assert not (tmp_path / "escape").exists()


def test_a_confirmation_with_malformed_saved_jobs_is_named(tmp_path, capsys, no_env, monkeypatch, mlflow_store):
    from tune import confirm, tracking
    from tune.confirmation import CONFIRM_STATE

    monkeypatch.chdir(tmp_path)
    tracking.ensure_experiment(tracking.client_for(mlflow_store), "dpgdiff", None)
    state = tmp_path / "r" / "c1" / CONFIRM_STATE
    state.parent.mkdir(parents=True)
    state.write_text('{"settings": {}, "jobs": 3}')
    _refused(confirm.main, ["--confirm-name", "c1", "--resume", "--tracking-uri", mlflow_store, "--storage-path",
                            str(tmp_path / "r")], capsys, str(state), "'jobs' (a list)")


def test_dpgdiff_commands_refuse_a_bogus_device_and_an_output_file(tmp_path, capsys):
    from dpgdiff.cli import main

    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "device 'bogus': expected auto, cpu, cuda or cuda:N" in err and "Traceback" not in err
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    assert main(["train", "--dataset", "synthetic", "--out", str(out)]) == 2
    assert "--out " + str(out) + ": a file is there" in capsys.readouterr().err
    assert out.read_text() == "keep me"


# ------------------------------------------------------------------------------------- --address and --storage-path
# Each used to pass the TCP check (or skip it) and then wait minutes in ray.init or Tune (issue 42 §5-6). A live
# cluster passing the same check: tests/test_cluster.py; a missing bucket at a live S3 endpoint:
# tests/test_shared_stores.py.

@pytest.fixture
def not_ray():
    """A plain TCP server on 127.0.0.1 that accepts connections and never says a word, closed after the test."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed: the test is over
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


@pytest.mark.parametrize("server", ["not_ray", "not_mlflow"])
def test_an_address_that_is_not_ray_is_refused_by_protocol(server, request, tmp_path, capsys, no_env, monkeypatch,
                                                           mlflow_store):
    """A silent TCP server and an HTTP server both accept the connection; neither answers Ray's GCS handshake."""
    from tune import confirm, tracking
    from tune.search import main

    address = request.getfixturevalue(server).removeprefix("http://")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what main sets for a cluster: undone after the test
    t0 = time.time()
    message = _refused(main, [*_search(tmp_path, "notray"), "--address", address], capsys, f"--address {address}",
                       "not as a Ray cluster's GCS", "Ray's handshake")
    assert time.time() - t0 < 45, f"took {time.time() - t0:.0f} s: {message}"
    monkeypatch.chdir(tmp_path)
    tracking.ensure_experiment(tracking.client_for(mlflow_store), "dpgdiff", None)  # confirm reads it first
    _refused(confirm.main, ["--name", "x", "--tracking-uri", mlflow_store, "--storage-path", str(tmp_path / "r"),
                            "--address", address], capsys, f"--address {address}", "not as a Ray cluster's GCS")


def test_address_auto_names_what_it_found(tmp_path, capsys, no_env, monkeypatch):
    """--address auto looks where Ray's 'auto' does: a `ray start --head` recorded in Ray's temp folder (here a
    cluster since stopped), else the Ray GCS processes of this machine (hidden here: the machine may run other
    Rays, another search's or another test's)."""
    from ray._private import services

    from tune.search import main

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # Ray's temp root: ray/ray_current_cluster under it
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what main sets for a cluster: undone after the test
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset())
    record = tmp_path / "ray" / "ray_current_cluster"
    _refused(main, [*_search(tmp_path, "auto0"), "--address", "auto"], capsys, "--address auto: no Ray cluster runs on "
             f"this machine (no $RAY_ADDRESS, nothing recorded in {record}, no Ray GCS process)", "ray start --head")
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset({"127.0.0.1:1", "127.0.0.1:2"}))
    _refused(main, [*_search(tmp_path, "auto2"), "--address", "auto"], capsys,
             "--address auto: 2 Ray instances run on this machine (127.0.0.1:1, 127.0.0.1:2)", "--address HOST:PORT")
    record.parent.mkdir()
    record.write_text("127.0.0.1:1")  # the last `ray start --head` of a cluster that is gone
    _refused(main, [*_search(tmp_path, "auto1"), "--address", "auto"], capsys,
             f"--address auto (recorded by the last `ray start --head` in {record}: 127.0.0.1:1): no Ray cluster "
             "answers there")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    _refused(main, [*_search(tmp_path, "auto3"), "--address", "auto"], capsys,
             "--address auto ($RAY_ADDRESS: 127.0.0.1:1): no Ray cluster answers there")
    _refused(main, [*_search(tmp_path, "auto4"), "--address", "127.0.0.1:2"], capsys,  # Ray would join $RAY_ADDRESS
             "--address 127.0.0.1:2: $RAY_ADDRESS is 127.0.0.1:1, and Ray would join that one")


def test_an_s3_storage_path_whose_endpoint_does_not_answer_is_refused(tmp_path, capsys, no_env, monkeypatch,
                                                                     mlflow_store):
    """It used to take 221 s, then a traceback. The endpoint and credentials as the README says: AWS_* variables."""
    from tune import confirm, tracking
    from tune.search import main

    for variable, value in {"AWS_ENDPOINT_URL": DEAD, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(variable, value)
    t0 = time.time()
    message = _refused(main, [*_search(tmp_path, "s3dead"), "--storage-path", "s3://bucket/searches"], capsys,
                       "--storage-path s3://bucket/searches: the bucket cannot be reached", "AWS_ENDPOINT_URL")
    assert time.time() - t0 < 30, f"took {time.time() - t0:.0f} s: {message}"
    monkeypatch.chdir(tmp_path)
    tracking.ensure_experiment(tracking.client_for(mlflow_store), "dpgdiff", None)  # confirm reads it first
    _refused(confirm.main, ["--name", "x", "--tracking-uri", mlflow_store, "--storage-path", "s3://bucket/c"], capsys,
             "--storage-path s3://bucket/c: the bucket cannot be reached")
