"""What a killed search driver leaves behind: its local Ray's processes and temp folder (issue 11 §2).

A local search makes its Ray temp folder with `new_temp_dir` and writes MARKER there before Ray starts:
the driver's PID and start time. A driver that ends normally stops its Ray and removes the folder
(tune.driver.run_search). A driver killed by SIGKILL (or the OOM killer) cannot: Ray's agents outlive
it, adopted by PID 1, and the folder stays. `clean_leftovers`, run when the next search starts (tune/search.py,
once its flags are accepted), finds the folders with MARKER whose driver is gone, stops the processes that
still hold files open in them (by PID: SIGTERM, then SIGKILL) and removes the folder.

The same cleanup without starting a search (issue 27 §6):

    python -m tune.leftovers             # stop a killed search's Ray processes (by PID), remove its temp folder
    python -m tune.leftovers --dry-run   # only list them

Never touched: a folder without MARKER (a Ray someone else started, or a --ray-temp-dir, which the
user owns), a folder of another user, and a folder whose driver still runs (a search in progress).
Processes are found through /proc (Linux); elsewhere nothing is cleaned.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

from dpgdiff.files import atomic_write_text

MARKER = "dpgdiff_search_driver.json"  # in the temp folder of a local Ray that a search started
OWNER = "dpgdiff tune/search.py"
RAY_TMPDIR = "RAY_TMPDIR"
TEMP_PREFIX = "ray"  # short: Ray's socket paths under the folder must stay under 107 bytes


def temp_root() -> Path:
    """Where local searches make (and look for) their Ray temp folders: $RAY_TMPDIR when set (Ray's own variable
    for its temp root), else /tmp (short paths), else the system's temp dir. Searches with different roots never
    see each other's leftovers."""
    if os.environ.get(RAY_TMPDIR):
        return Path(os.environ[RAY_TMPDIR])
    return Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())


# The longest Unix socket path Ray makes under its temp folder: <folder>/session_<date>_<pid>/sockets/plasma_store
# (the date with microseconds, 26 characters; a PID of up to 7 digits; ".N" when the name is taken)
SOCKET_TAIL = len("/session_2025-01-01_00-00-00_000000_4194304/sockets/plasma_store.9")
MAX_SOCKET_PATH = 107  # bytes of a Unix socket path (sun_path, with its terminating NUL: 108)
NEW_TEMP_DIR = len(f"/{TEMP_PREFIX}") + 8  # what new_temp_dir adds to temp_root(): mkdtemp's 8 random characters


def socket_room_error(folder: str, source: str, inside: bool) -> Optional[str]:
    """Why Ray's socket paths under `folder` (or, `inside`, under a new temp folder in it) would be too long for
    a Unix socket, or None. source: where the folder comes from ($RAY_TMPDIR, --ray-temp-dir)."""
    length = len(os.fsencode(os.path.abspath(folder))) + (NEW_TEMP_DIR if inside else 0) + SOCKET_TAIL
    if length <= MAX_SOCKET_PATH:
        return None
    room = MAX_SOCKET_PATH - SOCKET_TAIL - (NEW_TEMP_DIR if inside else 0)
    return (f"{source} {folder}: Ray's socket paths under it would be {length} bytes, over the "
            f"{MAX_SOCKET_PATH} bytes a Unix socket path may have; use a folder of at most {room} bytes "
            f"(e.g. {source.lstrip('$') + '=' if source.startswith('$') else source + ' '}/tmp)")


def new_temp_dir() -> str:
    """A new Ray temp folder under `temp_root()`, marked as this driver's (written before Ray starts)."""
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=temp_root()))
    atomic_write_text(folder / MARKER, json.dumps({"owner": OWNER, "pid": os.getpid(),
                                                   "start_time": process_start_time(os.getpid())}))
    return str(folder)


def clean_leftovers(root: Optional[Path] = None, grace_s: float = 5.0, dry_run: bool = False) -> list[str]:
    """Stop the processes of, and remove, every marked Ray temp folder under `root` whose driver is gone
    -> one line per folder cleaned (what was stopped and removed; with `dry_run`, what would be)."""
    if not Path("/proc/self/stat").exists():
        return []
    done = []
    for marker in sorted((root or temp_root()).glob(f"{TEMP_PREFIX}*/{MARKER}")):
        folder = marker.parent
        try:
            data = json.loads(marker.read_text())
            mine = folder.stat().st_uid == os.getuid() and data.get("owner") == OWNER
            pid, start = int(data["pid"]), data.get("start_time")
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue  # unreadable or not our format: not ours to judge
        if not mine or process_start_time(pid) == start:  # another user's, or its driver still runs
            continue
        if dry_run:
            done.append(f"a killed search's local Ray (driver pid {pid}): would stop pids "
                        f"{' '.join(map(str, holders(folder))) or '-'}, remove {folder}")
            continue
        stopped = stop_processes(holders(folder), grace_s)
        shutil.rmtree(folder, ignore_errors=True)
        done.append(f"a killed search's local Ray (driver pid {pid}): stopped pids "
                    f"{' '.join(map(str, stopped)) or '-'}, removed {folder}")
    return done


def process_start_time(pid: int) -> Optional[int]:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22), None when it is gone or a
    zombie. Together with the PID it names one process: a PID reused later has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 is fields[0]
    return None if fields[0] in ("Z", "X") else int(fields[19])


def holders(folder: Path) -> list[int]:
    """PIDs of this user's processes (not this one) with a file or working directory inside `folder`."""
    prefix = str(folder.resolve()) + os.sep
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(entry / "cwd")] + [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # gone, or another user's
            continue
        if any(link.startswith(prefix) for link in links):
            found.append(int(entry.name))
    return sorted(found)


def stop_processes(pids: list[int], grace_s: float = 5.0) -> list[int]:
    """SIGTERM each (by PID), SIGKILL those still there after `grace_s` -> the PIDs that were signalled."""
    started = {pid: process_start_time(pid) for pid in pids}
    started = {pid: t for pid, t in started.items() if t is not None}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, t in started.items():
            if process_start_time(pid) == t:  # still the same process
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(process_start_time(p) == t for p, t in started.items()):
            time.sleep(0.1)
    return sorted(started)


def main(argv: Optional[list[str]] = None) -> int:
    """python -m tune.leftovers [--dry-run] [--root DIR] -> 0 (what it found is printed)."""
    parser = argparse.ArgumentParser(
        prog="python -m tune.leftovers",
        description="Stop (by PID) the Ray processes that a killed tune/search.py driver left running, and remove "
                    "its Ray temp folder, without starting a search. Only folders a search marked as its own, "
                    "whose driver is gone, are touched.")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be stopped and removed")
    parser.add_argument("--root", default=None, help=f"where searches make their Ray temp folders (default: "
                                                      f"${RAY_TMPDIR}, else /tmp)")
    args = parser.parse_args(argv)
    lines = clean_leftovers(Path(args.root) if args.root else None, dry_run=args.dry_run)
    for line in lines:
        print(("found " if args.dry_run else "cleaned up ") + line)
    if not lines:
        print(f"nothing to clean up under {args.root or temp_root()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
