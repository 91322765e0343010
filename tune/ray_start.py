"""Ray for a search: start a local Ray of its own (or join a cluster) and check that a trial fits on a node."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import ray

import dpgdiff
from tune import leftovers, ray_internals
from tune.settings import SearchError, SearchSettings


TUNE_PACKAGE_DIR = Path(__file__).resolve().parent  # shipped to a cluster's workers with --ship-code
# How long a local Ray's node may take to start (Ray's own wait is 30 s; a loaded machine needs more), then once more:
# START_WAIT_S, times the load per CPU when that is above 1 (the node's processes then get that much less of a CPU;
# at a load of 25 on 2 cores a start took over 120 s), up to START_WAIT_MAX_S. $DPGDIFF_RAY_START_S sets it.
START_WAIT_S, START_WAIT_MAX_S, START_WAIT_ENV = 120.0, 600.0, "DPGDIFF_RAY_START_S"
MAX_STARTS = 5  # a raylet that exits during start-up (a busy machine) is tried again, within two full waits


def start_ray(settings: SearchSettings) -> Optional[str]:
    """Start a local Ray (returns its temp dir, for removal at the end) or join `run.address` (None)."""
    run = settings.run
    runtime_env: dict[str, Any] = {}
    if run.ship_code:
        runtime_env["py_modules"] = [str(Path(dpgdiff.__file__).parent), str(TUNE_PACKAGE_DIR)]
    if run.address is not None and run.address != "local":
        ray.init(address=run.address, logging_level="WARNING", runtime_env=runtime_env or None)
        _tighten_auth_token()
        return None
    # Workers are children of this process: they import dpgdiff and tune as it does (installed package).
    # A temp folder of our own is marked with this driver's PID: if it is killed, the next search cleans up.
    temp_dir = run.ray_temp_dir or leftovers.new_temp_dir()
    made = ray_internals.create_auth_token_privately()  # 0600 from the start: Ray would write it 0644
    if made:
        print(f"note: wrote a new Ray auth token for the local Ray to {made} (mode 0600)", flush=True)
    wait_s = start_wait_s()
    if wait_s > START_WAIT_S and not os.environ.get(START_WAIT_ENV):
        print(f"note: the machine is busy (load average {_load_text()} on {os.cpu_count()} CPU(s)): the local Ray "
              f"gets up to {wait_s:.0f} s to start", flush=True)
    give_up_at = time.monotonic() + 2 * wait_s  # two full waits: what two node-registration timeouts take
    for attempt in range(1, MAX_STARTS + 1):
        raylet_exited = _watch_raylet()
        try:  # no dashboard; every other local service binds 127.0.0.1 (tune/ray_internals.py)
            with ray_internals.patient_node_start(wait_s, hopeless=raylet_exited):
                session = ray_internals.init_local_ray(temp_dir, num_cpus=run.num_cpus or os.cpu_count(),
                                                       include_dashboard=False, dashboard_host="127.0.0.1",
                                                       logging_level="WARNING", runtime_env=runtime_env or None)
            break
        except Exception as exc:  # noqa: BLE001  Ray raises a bare Exception when its node start times out
            if ray_internals.NODE_START_MESSAGE not in str(exc):
                raise
            exited = raylet_exited()  # a longer wait would not have helped
            why = ("its raylet exited during start-up (on a busy machine Ray's agents can be too slow to write their "
                   "port files)" if exited else f"its node did not register within {wait_s:g} s")
            _stop_failed_start()
            load = _load_text()
            # a node that did not register is tried once more; a raylet that exited (within a minute or two) again
            # while two full waits have not passed: on a busy machine one of the starts gets its agents up in time
            if (attempt >= 2 and not exited) or attempt == MAX_STARTS or time.monotonic() >= give_up_at:
                if not run.ray_temp_dir:
                    shutil.rmtree(temp_dir, ignore_errors=True)
                tries = "twice" if attempt == 2 else f"{attempt} times"
                raise SearchError(f"the local Ray did not start, {tries}: {why} (load average {load} on "
                                  f"{os.cpu_count()} CPU(s): the machine is busy). Run the command again when it is "
                                  "less loaded" + ("" if exited else f", or give Ray longer with {START_WAIT_ENV}="
                                                   f"{2 * wait_s:g}")) from None
            print(f"note: the local Ray did not start: {why} (load average {load}); trying once more", flush=True)
    print_ray_processes(session)
    _tighten_auth_token()  # a local Ray with token auth writes one when there is none
    return None if run.ray_temp_dir else temp_dir


def start_wait_s() -> float:
    """Seconds a local Ray's node may take to register, per attempt: $DPGDIFF_RAY_START_S, else START_WAIT_S scaled
    by the 1-minute load average per CPU above 1, at most START_WAIT_MAX_S. SearchError naming the variable when
    it is not a positive number."""
    value = os.environ.get(START_WAIT_ENV, "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not seconds > 0:
            raise SearchError(f"${START_WAIT_ENV}={value!r}: expected the seconds a local Ray may take to start "
                              f"(a number > 0; unset: {START_WAIT_S:g} s, longer on a busy machine)")
        return seconds
    per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(START_WAIT_MAX_S, START_WAIT_S * max(1.0, per_cpu))


def _watch_raylet() -> Callable[[], bool]:
    """-> whether a raylet started from now on has exited (one that had exited before is not counted)."""
    before = _exited_raylets()
    return lambda: bool(_exited_raylets() - before)


def _exited_raylets() -> set[int]:
    """PIDs of the raylets below this process that have exited and are not reaped yet (Ray reaps them at shutdown).
    On a loaded machine a raylet aborts when its agents take too long to write their port files ("Timed out
    waiting for file ... metrics_agent_port" in its raylet.out); its node then never registers."""
    exited = set()
    for pid in _descendant_pids(os.getpid()):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if name == "raylet" and state == "Z":
            exited.add(pid)
    return exited


def _load_text() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _stop_failed_start() -> None:
    """After a start that timed out: Ray's own shutdown, then whatever it started that still runs (by PID)."""
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001  a half-started Ray may fail to shut down; its processes are stopped below
        pass
    leftovers.stop_processes(_descendant_pids(os.getpid()))


def _tighten_auth_token() -> None:
    note = ray_internals.tighten_auth_token()
    if note:
        print(f"note: {note}", flush=True)


def print_ray_processes(session: Path) -> None:
    """Log the local Ray's session folder and the processes this driver started (so a supervisor can stop
    them by PID)."""
    pids = _descendant_pids(os.getpid())
    print(f"ray session {session} pids {' '.join(map(str, pids)) or '-'}", flush=True)


def _descendant_pids(root: int) -> list[int]:
    """PIDs of every process below `root` (children, grandchildren, ...), read from /proc (Linux)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])  # field 4: the ppid
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier}
        found += frontier
    return sorted(found)


def check_resources(ray_api: Any, settings: SearchSettings) -> int:
    """A trial must fit on one node, or it would stay PENDING forever (search-notes) -> how many trials fit at
    once."""
    cpu, gpu = settings.cpus_per_trial, settings.gpus_per_trial
    nodes = [n.get("Resources", {}) for n in ray_api.nodes() if n.get("Alive")]
    total = ray_api.cluster_resources()
    fits = [n for n in nodes if n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu]
    if not fits:
        have = "; ".join(f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes))
        raise SearchError(f"each trial asks for {cpu:g} CPU and {gpu:g} GPU, but no node of the cluster has that "
                          f"({have or 'no live nodes'}; total {total.get('CPU', 0):g} CPU, "
                          f"{total.get('GPU', 0):g} GPU); lower --cpus-per-trial/--gpus-per-trial")
    slots = sum(int(min(n.get("CPU", 0) // cpu, n.get("GPU", 0) // gpu if gpu else 1e9)) for n in fits)
    print(f"Ray: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU; "
          f"room for {slots} trial(s) at once", flush=True)
    return slots
