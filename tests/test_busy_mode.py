"""The busy mode of the test suite (tests/busy.py, issue 42 §8): its processes load the CPU and are stopped by
PID; its variables are checked and name themselves when wrong; the pytest process starts them once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import busy
from tests.test_search_helpers import env, process_alive


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime (fields 14, 15)


def test_busy_processes_use_cpu_and_are_stopped_by_pid():
    with busy.busy_processes(2) as pids:
        assert len(set(pids)) == 2
        deadline = time.time() + busy.scaled(60)  # a second or two of CPU each on a quiet machine; more when busy
        while time.time() < deadline and min(_cpu_seconds(pid) for pid in pids) < 0.5:
            time.sleep(0.2)
        used = [_cpu_seconds(pid) for pid in pids]
        assert all(u >= 0.5 for u in used), f"the busy processes did not run: {used} s of CPU"
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"busy process {pid} outlived its block"


@pytest.mark.parametrize("variables, expected", [
    ({}, 1.0), ({busy.BUSY_ENV: "2"}, 3.0), ({busy.BUSY_ENV: "2", busy.MARGIN_ENV: "1.5"}, 1.5),
    ({busy.BUSY_ENV: "0"}, 1.0),
])
def test_the_margin_follows_the_mode(monkeypatch, variables, expected):
    for name in (busy.BUSY_ENV, busy.MARGIN_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert busy.margin() == expected and busy.scaled(10) == 10 * expected


@pytest.mark.parametrize("name, value", [(busy.BUSY_ENV, "two"), (busy.BUSY_ENV, "-1"), (busy.MARGIN_ENV, "0.5"),
                                         (busy.MARGIN_ENV, "x")])
def test_a_bad_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"\${name}={value!r}: expected"):
        busy.margin()


def test_the_pytest_process_starts_the_busy_processes_once_and_stops_them(tmp_path):
    """A pytest run in DPGDIFF_BUSY=2 mode: its header names the two PIDs, a test in it sees them running (their
    parent is the pytest process), and they are gone when the run ends."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os, pathlib\n"
        "def test_probe():\n"
        "    kids = [p for p in pathlib.Path('/proc').iterdir() if p.name.isdigit() and (p / 'stat').exists()\n"
        "            and (p / 'stat').read_text().rsplit(')', 1)[1].split()[1] == str(os.getpid())]\n"
        "    cmds = [(p / 'cmdline').read_bytes() for p in kids]\n"
        "    assert sum(b'# busy: a CPU-bound process' in c for c in cmds) == 2, cmds\n")
    # tests/conftest.py as a plugin: the probe lies outside tests/, where it would not be picked up
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                             str(probe)], cwd=tmp_path, env={**env(), busy.BUSY_ENV: "2"}, capture_output=True,
                            text=True, timeout=busy.scaled(300))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith(f"{busy.BUSY_ENV}=2"))
    pids = [int(word) for word in header.split("processes ")[1].split(" run")[0].split()]
    assert len(pids) == 2 and "waits are x3" in header, header
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "busy processes outlived the run"


def test_a_busy_process_ends_when_its_starter_is_killed():
    """The busy processes of a test run that is itself SIGKILLed (pytest_unconfigure never runs) end by themselves."""
    starter = subprocess.Popen([sys.executable, "-c", "import time\nfrom tests.busy import start_busy\n"
                                "print(start_busy(1)[0].pid, flush=True)\ntime.sleep(600)"],
                               env=env(), stdout=subprocess.PIPE, text=True)
    try:
        pid = int(starter.stdout.readline())
        time.sleep(0.5)
        assert process_alive(pid), "the busy process did not start"
    finally:
        starter.kill()
        starter.wait(timeout=30)
    deadline = time.time() + busy.scaled(30)
    while process_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not process_alive(pid), f"busy process {pid} outlived the process that started it"
