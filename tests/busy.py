"""A loaded machine for the tests (issue 42 §8): CPU-bound processes started beside them, and the factor by which
the tests' wall-clock waits grow when they run.

- `DPGDIFF_BUSY=N` (tests/conftest.py): the whole pytest run has N CPU-bound processes beside it, started once
  by the pytest process (not by each xdist worker) and stopped by PID at its end. CI keeps the plain run.
- `margin()`: how much longer the tests wait for wall-clock events (a trial's result, Ray's start, a server's
  answer): `DPGDIFF_TEST_MARGIN` when set, else 1 + N in the busy mode (on 2 cores, 2 busy processes leave the
  tests about half the CPU they had, and a test's wait covers several processes that compete: x3), else 1.
  `scaled(seconds)` applies it; the shared helpers (tests/test_search_helpers.py) scale their timeouts with it,
  so a test only scales its own waits.
- `busy_processes(n)`: n such processes for one test (tests/test_busy_machine.py's kill rounds), stopped by PID.

A busy process is a Python loop in a session of its own: one full core when it can get it, no memory, no files,
and it ends by itself when the process that started it is gone (checked every few tens of milliseconds), so even
a pytest run that is SIGKILLed leaves none behind. It inherits the test run's niceness (`nice -n 10 python -m
pytest` loads at that level).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

BUSY_ENV = "DPGDIFF_BUSY"  # how many CPU-bound processes run beside the whole test run
MARGIN_ENV = "DPGDIFF_TEST_MARGIN"  # the factor on the tests' waits (default: from DPGDIFF_BUSY)
# Spins while its parent (PID in argv: read at its start, the parent may already be gone) lives: an orphan's parent
# changes, so a test run that is itself killed leaves none behind
BUSY_LOOP = [sys.executable, "-c", "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n"
             "    for _ in range(1_000_000): pass  # busy: a CPU-bound process"]


def _env_number(name: str, kind: type, low: float) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or number < low:
        raise ValueError(f"${name}={value!r}: expected {'an integer' if kind is int else 'a number'} >= {low:g}")
    return number


def busy_count() -> int:
    """N of DPGDIFF_BUSY=N (0 when unset); ValueError naming the variable when it is not an integer >= 0."""
    return int(_env_number(BUSY_ENV, int, 0) or 0)


def margin() -> float:
    """The factor on the tests' wall-clock waits: DPGDIFF_TEST_MARGIN, else 1 + DPGDIFF_BUSY."""
    explicit = _env_number(MARGIN_ENV, float, 1)
    return explicit if explicit is not None else 1.0 + busy_count()


def scaled(seconds: float) -> float:
    """A wall-clock wait of `seconds` on a quiet machine, made to hold on the loaded one the mode describes."""
    return seconds * margin()


def start_busy(n: int) -> list[subprocess.Popen]:
    """Start n CPU-bound processes, each in its own session -> their Popen objects (stop them with stop_busy)."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([*BUSY_LOOP, str(os.getpid())], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
    except BaseException:
        stop_busy(procs)
        raise
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    """SIGKILL each busy process by its PID and reap it (a busy loop holds nothing that needs a clean end)."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.wait(timeout=30)


@contextmanager
def busy_processes(n: int) -> Iterator[list[int]]:
    """n CPU-bound processes while the block runs -> their PIDs; stopped by PID when it ends, however it ends."""
    procs = start_busy(n)
    try:
        yield [p.pid for p in procs]
    finally:
        stop_busy(procs)
