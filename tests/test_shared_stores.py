"""The shared stores of a cluster search, started for real by the tests (issue 41 §3): a search whose stores are a
PostgreSQL server (behind an MLflow tracking server and as the Optuna storage) or an S3 API server (Tune's
--storage-path s3://...) is SIGKILLed mid-trial and resumed from another working directory; then the records agree
as in the SQLite tests (one run per trial, nothing RUNNING, Optuna and MLflow agree).

PostgreSQL: the PostgreSQL 15 server programs (Debian's postgresql-15: `pg_config --bindir`; .ci/run installs it where
missing). `initdb` refuses to run as root, so as root the cluster is made and served by the unprivileged user
`nobody` (a temp folder under /tmp that it owns); the server listens on 127.0.0.1 only, on a free port, with trust
authentication (loopback, a throwaway cluster), and is stopped by its PID. S3: moto's standalone server (`moto[server]`,
the `[cluster]` extra) on 127.0.0.1, reached the way a user reaches a bucket: AWS_ENDPOINT_URL and the AWS_* credential
variables (README, "On a multi-node GPU cluster").
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.busy import scaled
from tests.test_search_helpers import (
    REPO,
    SEARCH_WITH_STUB,
    TINY_DATA,
    assert_study_agrees_with_mlflow,
    env,
    free_port,
    kill_session,
    mlflow_runs,
    run,
    start_http_server,
    tracking_uri,
)

pytestmark = pytest.mark.slow
TRIALS, EPOCHS = 3, 2
PG_USER = "nobody"  # initdb and postgres refuse root: the server runs as this user when the tests run as root
BUCKET = "dpgdiff-test"


# ------------------------------------------------------------------------------------- the servers

def _pg_bindir() -> Path:
    """Where initdb and postgres are: `pg_config --bindir`, else the PATH. Fails the test saying what is missing."""
    try:
        folder = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        if (folder / "initdb").exists():
            return folder
    except (OSError, subprocess.CalledProcessError):
        pass
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pytest.fail("the PostgreSQL server programs (initdb, postgres) are not installed: neither `pg_config --bindir` "
                "nor the PATH has them. Install Debian's postgresql-15 (.ci/run does: apt-get install postgresql-15)")


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:port, as PG_USER when run as root; stop() stops it by PID."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.user: dict = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_USER)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            self.user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, databases: tuple[str, ...]) -> None:
        data, log = self.folder / "data", self.folder / "server.log"
        made = subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync"], capture_output=True, text=True, **self.user)
        if made.returncode != 0:
            pytest.fail(f"initdb (as {PG_USER if self.user else 'this user'}) failed:\n{made.stdout[-2000:]}"
                        f"\n{made.stderr[-2000:]}")
        with log.open("w") as handle:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.folder}", "-c", "fsync=off"],
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, **self.user)
        import psycopg  # psycopg 3: SQLAlchemy 2.1's default PostgreSQL driver (the [cluster] extra)

        deadline = time.time() + scaled(120)
        while True:
            try:
                connection = psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                             autocommit=True)
                break
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    pytest.fail(f"the PostgreSQL server did not start on 127.0.0.1:{self.port}:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        with connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f"CREATE DATABASE {name}")
        connection.close()

    def count(self, database: str, sql: str) -> int:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return int(cursor.fetchone()[0])

    def stop(self) -> None:
        """SIGINT (PostgreSQL's fast shutdown) to the server's PID, then whatever of its session is left, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            kill_session(self.proc.pid)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def postgres():
    server = Postgres()
    try:
        server.start(("mlflow", "optuna"))
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------- the search

def _search(*extra: str) -> list[str]:
    """A tiny search (3 trials x 2 epochs, each epoch followed by a 1-s pause: tests.test_search_stubs.train_slow)."""
    return [*SEARCH_WITH_STUB, "train_slow", "--space", str(REPO / "search_spaces" / "smoke.yaml"), *TINY_DATA,
            "--epochs", str(EPOCHS), "--num-samples", str(TRIALS), "--max-concurrent", "2", "--scheduler", "fifo",
            "--set", "model.xt_injection=concat_token", "--quiet", *extra]


def _kill_mid_trial(args: list[str], cwd: Path, extra_env: dict, mid_trial, what: str) -> str:
    """Start the search in `cwd`, SIGKILL its driver once `mid_trial()` holds, stop what it left (by PID) -> its log."""
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / "driver.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(args, cwd=cwd, env={**env(), **extra_env, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
                                stdout=handle, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + scaled(300)
        while not mid_trial():
            if proc.poll() is not None:
                raise AssertionError(f"the search ended (rc {proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
            if time.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_session(proc.pid)  # the killed driver's local Ray
    return log.read_text()


def _resume(args: list[str], cwd: Path, extra_env: dict) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return run(args, cwd, timeout=300, extra_env=extra_env)


def _assert_records(tmp: Path, name: str, trials: list, uri: str, storage: str) -> None:
    """Every trial TERMINATED; one FINISHED MLflow run per trial, each epoch logged once, none RUNNING; the Optuna
    study agrees with MLflow."""
    from mlflow.tracking import MlflowClient

    assert len(trials) == TRIALS and all(t.status == "TERMINATED" for t in trials), trials
    parent, children = mlflow_runs(tmp, name, uri)
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["dpgdiff.trial_id"] for c in children) == sorted(t.trial_id for t in trials)
    client = MlflowClient(uri)
    for child in children:
        assert child.info.status == "FINISHED", (child.info.status, child.data.tags)
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_mrr_sum"))
        assert steps == list(range(1, EPOCHS + 1)), f"each epoch logged once: {steps}"
    assert_study_agrees_with_mlflow(tmp, name, storage=storage, uri=uri)


def test_postgres_behind_mlflow_server_and_optuna_survives_a_killed_driver(postgres, tmp_path):
    """MLflow tracking server on PostgreSQL, Optuna storage on PostgreSQL, Tune's state in a folder both working
    directories reach (a shared filesystem); kill the driver mid-trial in one directory, resume from another."""
    from ray.tune import ExperimentAnalysis

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    (tmp_path / "mlflow").mkdir()
    server = start_http_server([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres.url("mlflow"),
                                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], tmp_path / "mlflow",
                               f"{uri}/health", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                               timeout=600)  # a new database's migrations: over 3 minutes on 2 loaded cores
    try:
        name, shared = "pg-search", tmp_path / "shared" / "ray_results"
        storage = postgres.url("optuna")
        first, second = tmp_path / "first", tmp_path / "second"

        def mid_trial() -> bool:  # an epoch reported, and the trial not done
            rows = [f.read_text() for f in (shared / name).glob("trial_*/result.json")]
            return any(r.strip() and '"final": 1' not in r for r in rows)

        _kill_mid_trial(_search("--name", name, "--storage-path", str(shared), "--tracking-uri", uri,
                                "--optuna-storage", storage), first, {}, mid_trial, "a trial's first epoch")
        result = _resume([*SEARCH_WITH_STUB, "train_slow", "--name", name, "--storage-path", str(shared), "--resume",
                          "--quiet"], second, {})
        assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        assert "resuming search" in result.stdout and "start anew" not in result.stdout, "Tune's state was not restored"
        _assert_records(tmp_path, name, list(ExperimentAnalysis(str(shared / name)).trials), uri, storage)
        # the records are PostgreSQL's (no SQLite store was made in either working directory)
        assert postgres.count("mlflow", "SELECT count(*) FROM runs") >= TRIALS + 1
        assert postgres.count("optuna", "SELECT count(*) FROM trials") >= TRIALS
        assert not [p for d in (first, second) for p in d.rglob("*.db")]
    finally:
        kill_session(server.pid)


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3 server on 127.0.0.1 with one bucket -> the environment a user sets to reach it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    (tmp_path / "s3").mkdir()
    server = start_http_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               tmp_path / "s3", f"{endpoint}/moto-api/")
    variables = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata address (not loopback)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield variables
    finally:
        kill_session(server.pid)


def _s3_keys(variables: dict, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_s3_storage_path_survives_a_killed_driver_from_another_directory(s3_server, tmp_path, monkeypatch):
    """Tune's checkpoints and experiment state, and the search's own files, go to s3://bucket/prefix; the driver is
    killed mid-trial, its working directory deleted, and the search resumes from another one with nothing local.
    (MLflow and Optuna stay in one SQLite folder here, standing in for the tracking server the test above runs.)"""
    from ray.tune import ExperimentAnalysis

    name, storage_path = "s3-search", f"s3://{BUCKET}/searches"
    first, second, tracking = tmp_path / "first", tmp_path / "second", tmp_path / "tracking"
    uri = tracking_uri(tracking)

    def mid_trial() -> bool:  # Tune saved its state there, and a trial's first epoch checkpoint is uploaded
        keys = _s3_keys(s3_server, f"searches/{name}/")
        return any("experiment_state" in k for k in keys) and any("/checkpoint_000000/" in k for k in keys)

    _kill_mid_trial(_search("--name", name, "--storage-path", storage_path, "--tracking-uri", uri), first, s3_server,
                    mid_trial, "a trial's first checkpoint in the bucket")
    shutil.rmtree(first)
    result = _resume([*SEARCH_WITH_STUB, "train_slow", "--name", name, "--storage-path", storage_path, "--resume",
                      "--quiet"], second, s3_server)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "resuming search" in result.stdout and "start anew" not in result.stdout, "Tune's state was not restored"
    keys = _s3_keys(s3_server, f"searches/{name}/")
    assert f"searches/{name}/dpgdiff_search.json" in keys and any("experiment_state" in k for k in keys)
    assert not list(second.iterdir()), f"the resumed search wrote locally: {list(second.iterdir())}"
    for variable, value in s3_server.items():  # ExperimentAnalysis reads the bucket as the driver did
        monkeypatch.setenv(variable, value)
    trials = list(ExperimentAnalysis(f"{storage_path}/{name}").trials)
    _assert_records(tracking, name, trials, uri, f"sqlite:///{tracking / 'mlruns' / 'optuna.db'}")


def test_a_missing_bucket_at_a_live_s3_endpoint_is_named_before_ray_starts(s3_server, tmp_path, monkeypatch, capsys):
    """The endpoint answers, the bucket is not there: exit 2 naming the bucket and the endpoint, before Ray starts
    (an endpoint that does not answer at all: tests/test_refusals.py). The bucket that is there passes."""
    from tune.endpoints import check_storage_uri
    from tune.search import main

    for variable, value in s3_server.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_storage_uri(f"s3://{BUCKET}/searches")  # no error
    argv = _search("--name", "nobucket", "--storage-path", "s3://no-such-bucket/searches",
                   "--tracking-uri", tracking_uri(tmp_path))[len(SEARCH_WITH_STUB) + 1:]  # main's own arguments
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (f"--storage-path s3://no-such-bucket/searches: no bucket 'no-such-bucket' at "
            f"{s3_server['AWS_ENDPOINT_URL']}; create it first" in err), err[-2000:]
    assert "Traceback" not in err
    import ray

    assert not ray.is_initialized(), "Ray was started before the refusal"
