"""The one place that uses Ray names outside its public API, checked so a Ray upgrade fails loudly.

Ray offers no public way to give `ray.init` (local) its own temp directory: the per-search temp
dir keeps the socket paths short (they must stay under 107 bytes) and lets the driver remove
everything its Ray wrote. `ray.init`'s `_temp_dir` keyword does it (documented in ray.init's
docstring, underscored). `init_local_ray` checks the effect, the session folder under that temp
dir (Ray's documented layout: <temp dir>/session_latest), and raises RayInternalsChanged when it
is missing, instead of a search that silently starts Ray somewhere else
(tests/test_settings.py checks that it does).

Nor is there a public way to keep a local Ray off the network: on Linux its GCS, raylet, workers and
the driver's gRPC servers listen on every interface, and the runtime-env agent on the machine's
address, even with `_node_ip_address="127.0.0.1"` (ray.init maps loopback to the reachable address).
Ray's local-only mode, its default on macOS and Windows (ray_constants.ENABLE_RAY_CLUSTER, env
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), makes the node address 127.0.0.1, and every one of those
servers then binds 127.0.0.1 (tests/test_local_ray.py lists the sockets). `init_local_ray` turns it
on for the Ray it starts and checks that the node came up on 127.0.0.1.

Importing this module does not import Ray: tune/console.py takes Ray's logger name from here while a
command line is being checked, before the search sets Ray's auth mode, which Ray reads once, when it is
first imported. The two schedulers below, which subclass Tune's, are therefore defined on first use.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

TEMP_DIR_KEYWORD = "_temp_dir"  # ray.init's keyword for the root temp dir of a local Ray
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode (node address 127.0.0.1)
LOOPBACK = "127.0.0.1"
# The logger of Ray's "Token authentication is enabled for this Ray cluster" notice (tune/console.py drops it)
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # Tune's saved experiment state (one per driver session)


def experiment_state_saved(path: str) -> bool:
    """Whether Tune saved an experiment state in the experiment folder `path` (local, or a pyarrow URI).

    `Tuner.can_restore` only looks for tuner.pkl, which Tune writes before its first state: a driver killed in
    between leaves a folder that `Tuner.restore` accepts but restores as a new run whose search generator
    counts num_samples = 1, so the resumed search stops after one trial. Such a folder is started anew."""
    import fnmatch

    import pyarrow.fs

    if "://" in path:
        fs, root = pyarrow.fs.FileSystem.from_uri(path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return any(fnmatch.fnmatch(Path(info.path).name, EXPERIMENT_STATE_GLOB) for info in infos)


AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"  # Ray's own variable: where its auth token file is


def auth_token_path() -> Path:
    """Ray's auth token file: $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (where Ray writes one)."""
    return Path(os.environ.get(AUTH_TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")


def tighten_auth_token() -> Optional[str]:
    """Make this user's Ray auth token file readable by its owner only (0600) -> a note when it was not.

    Ray 2.60 writes the token (`ray get-auth-token --generate`, or a local Ray with token auth and no token yet)
    with the umask's mode, usually 0644: every user of the machine could read it and join the cluster (issue 27
    §6). A file of another user is left alone."""
    path = auth_token_path()
    try:
        info = path.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or not info.st_mode & 0o077:
        return None
    path.chmod(0o600)
    return f"made Ray's auth token {path} readable by its owner only (mode 0600; it was {oct(info.st_mode & 0o777)})"


def create_auth_token_privately() -> Optional[Path]:
    """Before a local `ray.init`: write the auth token Ray would write, owner-only from its creation -> its path,
    or None when Ray will not write one (token auth off, or a token already there: `tighten_auth_token` then).

    A local Ray with token auth (its default) and no token writes ~/.ray/auth_token itself, with the umask's mode
    (usually 0644), and the search could only make it 0600 after Ray started: every user of the machine could read
    it in between. Ray's own steps are followed (ray._private.authentication.authentication_token_setup
    .ensure_token_if_auth_enabled: its token loader's `has_token`, its default path, its generator); only the
    file's mode differs. Ray then finds the token and writes none."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return None
    try:
        from ray._private.authentication import authentication_token_setup as setup
        from ray._private.authentication.authentication_token_generator import generate_new_authentication_token
        from ray._raylet import AuthenticationTokenLoader

        loader = AuthenticationTokenLoader.instance()
        path = setup._get_default_token_path()
    except (ImportError, AttributeError) as exc:
        raise RayInternalsChanged(f"ray {_ray_version()}: Ray's auth token setup moved ({exc}); update "
                                  "tune/ray_internals.py's create_auth_token_privately") from None
    if loader.has_token(ignore_auth_mode=True):
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:  # O_EXCL: a token another process wrote meanwhile is kept (and tightened after the start if need be)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_new_authentication_token())
    loader.reset_cache()
    return path


class RayInternalsChanged(RuntimeError):
    """The installed Ray no longer honours an internal name this project relies on."""


def run_config(tuner: Any) -> Any:
    """The RunConfig a Tuner's fit() uses: its TunerInternal's (Tuner._local_tuner.get_run_config()). `Tuner.restore`
    brings back the one saved by the first driver and takes none, so this is how a resume reaches it."""
    local = getattr(tuner, "_local_tuner", None)
    config = local.get_run_config() if local is not None and hasattr(local, "get_run_config") else None
    if config is None or not all(hasattr(config, a) for a in ("verbose", "progress_reporter", "callbacks", "stop")):
        import ray

        raise RayInternalsChanged(f"ray {ray.__version__}: a Tuner has no _local_tuner.get_run_config() with verbose, "
                                  "progress_reporter, callbacks and stop; update tune/ray_internals.py")
    return config


STOPPER_ATTR = "_stopper"  # TuneController's experiment stopper: RunConfig.stop, and also part of its saved state


@contextmanager
def run_config_stopper_kept() -> Iterator[None]:
    """Within it, a resumed Tuner stops by the stopper of its RunConfig, as a new one does.

    TuneController.resume sets the controller's attributes from the experiment state the earlier driver saved
    (`__setstate__`), `_stopper` among them: the stopper pickled then replaces the one the controller was built with
    (RunConfig.stop). A --time-budget's stopper reads this driver's clock, which tune/budget.py hands to the
    RunConfig's hooks and never pickles: the saved copy, without it, would never stop a resumed search. Tune's own
    stoppers keep their state in the stopper object itself, so for them the two are the same."""
    from ray.tune.execution.tune_controller import TuneController

    restore = TuneController.__dict__.get("__setstate__")
    if restore is None:
        import ray

        raise RayInternalsChanged(f"ray {ray.__version__}: TuneController has no __setstate__ of its own; "
                                  "update tune/ray_internals.py")

    def keep_stopper(controller: Any, state: dict[str, Any]) -> None:
        built_with = controller.__dict__.get(STOPPER_ATTR)
        restore(controller, state)
        if built_with is not None:
            setattr(controller, STOPPER_ATTR, built_with)

    TuneController.__setstate__ = keep_stopper
    try:
        yield
    finally:
        TuneController.__setstate__ = restore


def set_progress_output(tuner: Any, verbose: int, progress_reporter: Any) -> None:
    """Give a restored Tuner this invocation's output settings (its saved run config has the first driver's,
    --quiet or not)."""
    config = run_config(tuner)
    config.verbose = verbose
    config.progress_reporter = progress_reporter


def session_dir(temp_dir: str) -> Path:
    """The local Ray session folder under `temp_dir` (resolved; it is a symlink to session_<date>_<pid>)."""
    return Path(temp_dir, "session_latest").resolve()


def init_local_ray(temp_dir: str, **kwargs: Any) -> Path:
    """`ray.init(address="local", **kwargs)` with its root temp dir at `temp_dir`, every server of it on
    127.0.0.1 -> the session folder."""
    import ray
    from ray._private import ray_constants

    saved = os.environ.get(LOCAL_ONLY_ENV), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[LOCAL_ONLY_ENV] = "0"  # read by the Ray processes ray.init starts (they inherit it)
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already: its copy of the flag
    try:
        ray.init(address="local", **{TEMP_DIR_KEYWORD: temp_dir}, **kwargs)
    finally:  # only this Ray is local-only: a later ray.init in this process gets Ray's default again
        if saved[0] is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
    if not Path(temp_dir, "session_latest").exists():
        ray.shutdown()
        raise RayInternalsChanged(
            f"ray {ray.__version__}: ray.init({TEMP_DIR_KEYWORD}={temp_dir!r}) started Ray elsewhere (no "
            f"session_latest there); update tune/ray_internals.py")
    addresses = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    if addresses != {LOOPBACK}:
        ray.shutdown()
        raise RayInternalsChanged(
            f"ray {ray.__version__}: {LOCAL_ONLY_ENV}=0 no longer keeps a local Ray on {LOOPBACK} (node address "
            f"{', '.join(map(str, sorted(addresses, key=str)))}); update tune/ray_internals.py")
    return session_dir(temp_dir)


# Ray's node start waits 30 s (hard-coded in ray._private.node.Node.__init__) for its raylet to register with the
# GCS, then raises "The current node timed out during startup". On a loaded machine (load average 10-25 on 2
# cores, issue 42) that is too short. Node.__init__ polls ray._private.services.get_node, which raises RuntimeError
# while the node is not registered: `patient_node_start` has that call itself keep polling for up to `seconds`.
NODE_START_MESSAGE = "timed out during startup"  # in the exception Ray raises when its wait is over


@contextmanager
def patient_node_start(seconds: float, hopeless: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Within it, a starting local Ray waits up to about `seconds` (not 30) for its node to register, or until
    `hopeless()` says it never will (its raylet exited: Ray's own loop then ends within its 30 s)."""
    from ray._private import services

    original = getattr(services, "get_node", None)
    if original is None:
        raise RayInternalsChanged(f"ray {_ray_version()}: ray._private.services.get_node is gone; update "
                                  "tune/ray_internals.py's patient_node_start")

    deadline: list[float] = []  # set by the first poll: Ray's own 30 s are over when this wait is

    def get_node(*args: Any, **kwargs: Any) -> Any:
        deadline[:] = deadline or [time.monotonic() + seconds]
        while True:
            try:
                return original(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline[0] or hopeless():
                    raise
                time.sleep(0.5)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


def _ray_version() -> str:
    import ray

    return ray.__version__


# ------------------------------------------------------------------------------------- a cluster's address
# `ray.init(address=...)` waits minutes for something that is not a Ray cluster, and `--address auto` may pick any
# Ray of this machine. Before Ray is imported in the driver, tune/endpoints.py resolves 'auto' with the two
# sources below and has Ray's own GCS client shake hands with the address (its GetClusterId call, authenticated
# with this machine's token as ray.init's would be), in a child process: Ray's client waits 5 s per connection
# (its config gcs_rpc_server_connect_timeout_s, read once per process from the environment), set shorter there
# without touching the driver's own Ray.

GCS_CONNECT_TIMEOUT_ENV = "RAY_gcs_rpc_server_connect_timeout_s"


def auto_address_sources() -> tuple[Optional[str], str, list[str]]:
    """Where `--address auto` can find a cluster -> (the address the last `ray start --head` of this machine
    recorded or None, the file Ray records it in, the GCS addresses of the Ray processes running here)."""
    from ray._common.utils import get_ray_address_file
    from ray._private import services

    return services.find_bootstrap_address(None), get_ray_address_file(None), sorted(services.find_gcs_addresses())


def gcs_handshake(address: str, connect_s: float, answer_s: float, limit_s: float) -> tuple[bool, str]:
    """Ray's GCS client connects to `address` (within `connect_s` per connection) and asks for its cluster ID
    (within `answer_s`), in a child process stopped after `limit_s` -> (True, the cluster ID) or (False, why not,
    in Ray's words)."""
    import json
    import subprocess
    import sys

    child = "import sys; from tune.ray_internals import _handshake_child; _handshake_child(sys.argv[1], sys.argv[2])"
    env = dict(os.environ, **{GCS_CONNECT_TIMEOUT_ENV: str(max(1, round(connect_s)))})
    # the child imports this module from the repository, wherever the command runs and whether or not it is installed
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run([sys.executable, "-c", child, address, str(int(answer_s * 1000))], env=env,
                              capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return False, f"no handshake within {limit_s:g} s"
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        return False, f"the check itself failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    return bool(answer["ok"]), str(answer["detail"])


def _handshake_child(address: str, answer_ms: str) -> None:
    """gcs_handshake's child: one JSON line {"ok": bool, "detail": the cluster ID or the error}."""
    import json

    try:
        from ray._raylet import InnerGcsClient

        client = InnerGcsClient.standalone(address, None, int(answer_ms))
        print(json.dumps({"ok": True, "detail": client.cluster_id.hex()}))
    except Exception as exc:  # noqa: BLE001  Ray's RpcError, AuthenticationError, ...: reported in its own words
        print(json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"}))


# ------------------------------------------------------------------------------------- experiment snapshots
# Tune saves its experiment state (trials, the searcher's Optuna study) at the end of a step, at most every
# 10 s unless its checkpoint manager's force flag is set. A trial the searcher proposed after the last save is
# lost if the driver is killed before the next one: the restored searcher proposes its configuration again
# under a new id (issue 11 §1). The schedulers below set that flag whenever a trial is added, so the state
# is saved at the end of the very step that created the trial: one save per step that adds trials (several, when
# Tune fills several free slots in one step: tune/tuner.py's `trial_limit`; bench/bench_snapshots.py prints what
# the saves cost).

FORCE_FLAG = "_should_force_sync_up"  # TuneController._checkpoint_manager's "save at the end of this step"
MARK_FOR_SAVE = "_mark_trial_to_checkpoint"  # TuneController: write this trial's state in the next save


def save_state_this_step(tune_controller: Any) -> None:
    """Ask Tune to save the experiment state at the end of the current step. `tune_controller`: what Tune passes
    to a scheduler's hooks (a wrapper around its TuneController)."""
    controller = getattr(tune_controller, "__dict__", {}).get("_tune_controller", tune_controller)
    manager = getattr(controller, "__dict__", {}).get("_checkpoint_manager")
    if manager is None or not hasattr(manager, FORCE_FLAG):
        import ray

        raise RayInternalsChanged(f"ray {ray.__version__}: Tune's controller has no _checkpoint_manager.{FORCE_FLAG}; "
                                  "update tune/ray_internals.py")
    setattr(manager, FORCE_FLAG, True)


def save_trial_this_step(tune_controller: Any, trial: Any) -> None:
    """Have Tune write `trial`'s state (status, failure count) in the save at the end of the current step.

    Tune rewrites a trial's saved state only when the trial is marked for it. A trial whose actor died with its
    node (issue 11 §5) and has no retry left is set to ERROR without that mark (TuneController._schedule_trial_stop
    returns early for a trial without a live actor), so the saved experiment state kept it RUNNING: the search's
    summary counted it as interrupted, asked for a resume and exited 130 (tests/test_node_loss.py)."""
    controller = getattr(tune_controller, "__dict__", {}).get("_tune_controller", tune_controller)
    mark = getattr(controller, MARK_FOR_SAVE, None)
    if mark is None:
        import ray

        raise RayInternalsChanged(f"ray {ray.__version__}: Tune's controller has no {MARK_FOR_SAVE}; "
                                  "update tune/ray_internals.py")
    mark(trial)
    save_state_this_step(tune_controller)


SCHEDULERS = ("SnapshotASHAScheduler", "SnapshotFIFOScheduler")


def __getattr__(name: str) -> Any:
    """The schedulers of SCHEDULERS, defined when first asked for (PEP 562): they subclass Tune's schedulers, and
    defining them imports Ray (see the module's docstring). A search's scheduler is pickled with Tune's state by its
    name in this module, as before, so a resume finds it here."""
    if name not in SCHEDULERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _define_schedulers()
    return globals()[name]


def _define_schedulers() -> None:
    global SnapshotASHAScheduler, SnapshotFIFOScheduler  # module-level classes (their __qualname__ is their name)
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    class SnapshotASHAScheduler(ASHAScheduler):
        """ASHA that has Tune save its experiment state in the step that adds a trial, and with a failed trial's
        status; it never stops a trial at its last epoch (max_t)."""

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_add(tune_controller, trial)
            save_state_this_step(tune_controller)

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            """ASHA's decision (its rungs record the result as usual), except at max_t: there a cut saves no
            training, but Tune would stop the trial before its final report (best epoch, test metrics, best.pt)
            arrived whenever that report is slower than Tune's reaction (a race the DiffuRec search's trials lost);
            the trial then looked stopped early although it trained every epoch."""
            action = super().on_trial_result(tune_controller, trial, result)
            if action == self.STOP and result.get(self._time_attr, 0) >= self._max_t:
                self._num_stopped -= 1
                return self.CONTINUE
            return action

        def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_error(tune_controller, trial)
            save_trial_this_step(tune_controller, trial)

    class SnapshotFIFOScheduler(FIFOScheduler):
        """FIFO that has Tune save its experiment state in the step that adds a trial, and with a failed trial's
        status."""

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_add(tune_controller, trial)
            save_state_this_step(tune_controller)

        def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_error(tune_controller, trial)
            save_trial_this_step(tune_controller, trial)


# ------------------------------------------------------------------------------------- in-epoch progress
# A trial's progress inside an epoch (examples done, seconds: dpgdiff/training/loop.py's `progress` hook) reaches
# the driver's status line (tune/progress.py) through Ray's internal key-value store (in the GCS, which every
# node reaches): one small JSON value per trial, overwritten every few seconds. Tune has no public channel for
# it: `tune.report` would add a training iteration (a result, an MLflow step, an ASHA decision). A failure here
# costs only the progress line, never the trial.

PROGRESS_NAMESPACE = "dpgdiff_progress"


def put_progress(trial_id: str, progress: dict[str, Any]) -> None:
    """Publish one trial's in-epoch progress (trial side); errors are swallowed."""
    import json

    try:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(trial_id, json.dumps(progress), True, namespace=PROGRESS_NAMESPACE)
    except Exception:  # noqa: BLE001  see above: the progress line is optional
        pass


def read_progress(trial_ids: list[str]) -> dict[str, dict[str, Any]]:
    """trial id -> its latest published progress (driver side); {} when Ray is not connected or on any error."""
    import json

    out: dict[str, dict[str, Any]] = {}
    try:
        from ray.experimental import internal_kv

        if not internal_kv._internal_kv_initialized():
            return out
        for trial_id in trial_ids:
            value = internal_kv._internal_kv_get(trial_id, namespace=PROGRESS_NAMESPACE)
            if value:
                out[trial_id] = json.loads(value)
    except Exception:  # noqa: BLE001  see above
        pass
    return out
