"""Shared pieces of the search tests (no tests in here): run tune/search.py in a subprocess, read MLflow, stop
processes by PID, start a loopback Ray cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests.busy import scaled

REPO = Path(__file__).resolve().parent.parent
SEARCH = [sys.executable, str(REPO / "tune" / "search.py")]
REPORT = [sys.executable, str(REPO / "tune" / "report.py")]
CONFIRM = [sys.executable, str(REPO / "tune" / "confirm.py")]
SEARCH_WITH_STUB = [sys.executable, "-m", "tests.search_with_stub"]  # + the stub's name (tests.test_search_stubs)
# A tiny synthetic set (<1,000 items per domain, hence the smoke space's eval.n_negatives=99) and the
# smoke space: a trial of 2 epochs trains in a few seconds.
TINY_DATA = ["--data-option", "n_users=300", "--data-option", "n_items_x=150", "--data-option", "n_items_y=150"]


def search_args(tmp: Path, name: str, *extra: str, train_fn: str | None = None) -> list[str]:
    """tune/search.py's command line; with `train_fn`, trials call that stub of tests.test_search_stubs."""
    command = [*SEARCH_WITH_STUB, train_fn] if train_fn else SEARCH
    return [*command, "--space", str(REPO / "search_spaces" / "smoke.yaml"), *TINY_DATA, "--name", name,
            "--storage-path", str(tmp / "ray_results"), "--tracking-uri", tracking_uri(tmp), "--quiet", *extra]


def tracking_uri(tmp: Path) -> str:
    (tmp / "mlruns").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("RAY_ADDRESS", None)  # a local search must not attach to another cluster
    e.pop("MLFLOW_TRACKING_URI", None)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]


def generate_ray_token(home: Path) -> Path:
    """A fresh Ray auth token made by Ray's own command (`ray get-auth-token --generate`), as a user would on a
    cluster head, but with HOME pointed at `home`: the user's ~/.ray/auth_token is never read or written."""
    home.mkdir(parents=True, exist_ok=True)
    e = dict(os.environ, HOME=str(home))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        e.pop(var, None)
    proc = subprocess.run([*RAY_CLI, "get-auth-token", "--generate"], env=e, capture_output=True, text=True,
                          timeout=scaled(600))  # seconds when quiet; importing Ray on a loaded 2-core machine can take minutes
    token = home / ".ray" / "auth_token"
    assert proc.returncode == 0 and token.is_file(), f"ray get-auth-token --generate failed:\n{proc.stderr[-2000:]}"
    token.chmod(0o600)  # Ray writes it 0644 (README: the cluster recipe); a token the tests write is 0600
    return token


def run(args: list[str], tmp: Path, timeout: float = 240, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run to completion in its own session; whatever it leaves behind is stopped by PID. timeout: on a quiet
    machine (scaled by the busy mode, tests/busy.py)."""
    proc = subprocess.Popen(args, cwd=tmp, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    timeout = scaled(timeout)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(args)} timed out after {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    finally:
        kill_session(proc.pid)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def kill_when_file_appears(args: list[str], cwd: Path, marker: Path, log: Path, timeout: float) -> None:
    """Start a search in its own session (output to `log`) and SIGKILL it as soon as `marker` exists, polled every
    10 ms (kill windows in the first seconds are short); what it leaves is stopped by PID."""
    proc = kill_when(args, cwd, log, marker.exists, timeout, f"no {marker.name}")
    kill_session(proc.pid)


def kill_when(args: list[str], cwd: Path, log: Path, ready: Callable[[], bool], timeout: float, what: str,
              extra_env: dict | None = None) -> subprocess.Popen:
    """Start a search in its own session (output to `log`), SIGKILL its driver as soon as `ready()` (polled every
    10 ms) and reap it -> its Popen. The driver's Ray processes are left to the caller (kill_session(proc.pid)
    stops them by PID; the next search cleans them up), and stopped here only when this fails: `what` says what
    never came before `timeout` (scaled by the busy mode) or before the search ended."""
    with log.open("w") as handle:
        proc = subprocess.Popen(args, cwd=cwd, env={**env(), **(extra_env or {})}, stdout=handle,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + scaled(timeout)
        while not ready():
            assert proc.poll() is None and time.time() < deadline, f"{what}:\n{log.read_text()[-4000:]}"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except BaseException:
        kill_session(proc.pid)
        raise
    return proc


def session_pids(sid: int) -> list[int]:
    """PIDs of the processes in session `sid` (a child started with start_new_session=True has sid == pid)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process of one session, by PID."""
    pids = session_pids(sid)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if process_alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.time() + grace
    while time.time() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (exists and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def mlflow_runs(tmp: Path, search: str, uri: str | None = None) -> tuple[object, list]:
    """(parent run, its trials' child runs) of one search in the test's MLflow store (confirmation runs excluded).
    uri: another tracking URI (a tracking server) instead of the test's SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or tracking_uri(tmp))
    exp = client.get_experiment_by_name("dpgdiff")
    parents = client.search_runs([exp.experiment_id], f"tags.`dpgdiff.search` = '{search}' and tags.`dpgdiff.role` = 'search'")
    assert len(parents) == 1, f"expected one parent run for {search}, got {len(parents)}"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}' "
                                                       "and tags.`dpgdiff.role` = 'trial'")
    return parents[0], list(children)


def assert_study_agrees_with_mlflow(tmp: Path, search: str, storage: str | None = None,
                                    uri: str | None = None) -> set[int]:
    """The search's Optuna study (`optuna.load_study` on its default storage, mlruns/optuna.db) holds the same
    trials as MLflow: one per trial run, matched by Optuna trial number (tag dpgdiff.optuna_trial), with the
    same sampled parameters (tag dpgdiff.sampled) and, for a trial that trained to its last epoch, the value
    MLflow holds (best_val_mrr_sum: the final report's val_mrr_sum). The only other study trials are those a
    driver kill lost (asked after Tune's last snapshot: FAIL, user attribute dpgdiff.lost) -> their numbers.
    storage, uri: another Optuna storage and MLflow tracking URI (shared stores) instead of the test's SQLite ones."""
    import json
    import math

    import optuna

    from tune.names import LOST_TAG

    study = optuna.load_study(study_name=search, storage=storage or f"sqlite:///{tmp / 'mlruns' / 'optuna.db'}")
    _, children = mlflow_runs(tmp, search, uri)
    runs = {int(c.data.tags["dpgdiff.optuna_trial"]): c for c in children}
    trials = {t.number: t for t in study.get_trials()}
    lost = {n for n, t in trials.items() if LOST_TAG in t.user_attrs}
    assert all(trials[n].state == optuna.trial.TrialState.FAIL for n in lost)
    # a trial --time-budget stopped before it reported: PRUNED, and no run if it never started
    lost |= {n for n, t in trials.items() if n not in runs and t.state == optuna.trial.TrialState.PRUNED
             and t.user_attrs.get("dpgdiff.stopped_by") == "time_budget"}
    assert sorted(set(trials) - lost) == sorted(runs), f"study trials {sorted(trials)} (lost {sorted(lost)}) vs " \
                                                        f"MLflow runs {sorted(runs)}"
    for number, run in runs.items():
        trial = trials[number]
        assert trial.params == json.loads(run.data.tags["dpgdiff.sampled"]), f"trial {number}: params differ"
        if run.info.status != "FINISHED" or "dpgdiff.stopped_early" in run.data.tags:
            continue
        if "best_val_mrr_sum" not in run.data.metrics:  # --time-budget stopped it before its first result
            assert run.data.tags.get("dpgdiff.stopped_by") == "time_budget", (number, run.data.tags)
            assert trial.state == optuna.trial.TrialState.PRUNED, f"trial {number}: {trial.state}"
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE, \
                f"trial {number}: {trial.state}; its run: {run.data.metrics}, {run.data.tags}"
            assert math.isclose(trial.value, run.data.metrics["best_val_mrr_sum"], rel_tol=1e-9), \
                f"trial {number}: study value {trial.value} vs MLflow {run.data.metrics['best_val_mrr_sum']}"
    return lost


def trial_results(trial_dir: Path) -> list[dict]:
    """The results a trial reported so far (its result.json: one JSON line per tune.report); [] before the file
    exists. A last line still being written is left out."""
    import json

    try:
        lines = (trial_dir / "result.json").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def tune_trials(tmp: Path, name: str) -> list:
    from ray.tune import ExperimentAnalysis

    return list(ExperimentAnalysis(str(tmp / "ray_results" / name)).trials)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http_server(cmd: list[str], folder: Path, ready_url: str, extra_env: dict | None = None,
                      timeout: float = 180) -> subprocess.Popen:
    """Start a server (its own session, output in folder/server.log) and wait until `ready_url` answers 200.
    The caller stops it with kill_session(proc.pid); a server that dies or never answers fails the test
    with the end of its log."""
    import urllib.request

    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env={**env(), **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + scaled(timeout)  # seconds when the machine is idle; minutes under a heavy load
    while True:
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            kill_session(proc.pid)
            raise AssertionError(f"{' '.join(cmd[:5])} did not answer {ready_url}\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)



def ray_start(args: list[str], log: Path, token: Path, extra_env: dict | None = None) -> subprocess.Popen:
    """`ray start ARGS` in its own session (the node's processes stay in it: stop them with kill_session(pid))."""
    e = {**env(), **(extra_env or {})}
    e["RAY_AUTH_MODE"] = "token"
    e["RAY_AUTH_TOKEN_PATH"] = str(token)  # the README recipe: the head's token, copied to every node
    with log.open("w") as handle:
        proc = subprocess.Popen([*RAY_CLI, "start", *args, "--disable-usage-stats"], env=e, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=scaled(120))
    except subprocess.TimeoutExpired:
        pass
    if proc.returncode != 0:  # a start that failed or hangs (a loaded machine) leaves its GCS and agents running
        kill_session(proc.pid)
        raise AssertionError(f"ray start {' '.join(args[:2])} failed (exit {proc.returncode}):\n"
                             f"{log.read_text()[-3000:]}")
    return proc


class LoopbackCluster:
    """A Ray cluster of nodes on 127.0.0.1 (1 CPU each, own short temp dirs), each node started with `ray start` in
    its own session and stopped by PID (never `ray stop`, which kills by name). `extra_env`: for every node's
    processes (the trial workers inherit it)."""

    def __init__(self, folder: Path, token: Path, extra_env: dict | None = None) -> None:
        self.folder, self.token, self.extra_env = folder, token, dict(extra_env or {})
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sessions: list[int] = []  # the session id of each node's `ray start`: head first
        self.temps: list[Path] = []

    def _start(self, args: list[str], prefix: str) -> int:
        import tempfile

        temp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: socket paths must stay under 107 bytes
        self.temps.append(temp)
        log = self.folder / f"node{len(self.sessions)}.log"
        proc = ray_start([*args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(temp)],
                         log, self.token, self.extra_env)
        self.sessions.append(proc.pid)
        return proc.pid

    def start_head(self) -> int:
        # A dashboard port of its own: the default 8265 may be held by a local search running beside this test.
        return self._start(["--head", "--port", str(self.port), "--include-dashboard", "false",
                            "--dashboard-port", str(free_port())], "rh")

    def add_worker(self) -> int:
        """Start one more worker node -> the session id of its processes."""
        return self._start(["--address", self.address], "rw")

    def stop(self) -> None:
        for sid in reversed(self.sessions):
            kill_session(sid)
        time.sleep(0.5)
        for temp in self.temps:
            subprocess.run(["rm", "-rf", str(temp)], check=False)


def node_processes(sid: int, name: str) -> list[int]:
    """PIDs of the processes named `name` (e.g. "raylet") among a node's session `sid`: found by session, used
    by PID."""
    found = []
    for pid in session_pids(sid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(pid)
        except OSError:
            continue
    return found
