"""Ray's auth token is never readable by others, not even while a local Ray starts (issue 42 §6).

A local Ray with token auth (Ray 2.60's default) and no token writes ~/.ray/auth_token with the umask's mode (0644
under the usual 022); the search used to make it 0600 only after Ray had started. Now the search writes the token
first, 0600 from its creation (tune/ray_internals.py's create_auth_token_privately), and Ray uses it.

The first test runs the step of `ray.init` that writes the token (Ray's ensure_token_if_auth_enabled) in a child
process with an empty HOME and umask 022, after the search's step, and without it (Ray's own 0644: what the fix is
for; if a Ray release writes 0600 itself, that half fails and the workaround can go). The second (slow) starts a
local Ray the way a search does (tune.ray_start.start_ray), while a thread of that process reads the token file's
mode every millisecond."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_search_helpers import REPO, env, kill_session

CHILD = r'''
import json, os, shutil, sys, threading, time
from pathlib import Path
from types import SimpleNamespace

os.umask(0o022)  # the usual umask: a file made with open(path, "w") is 0644
token = Path.home() / ".ray" / "auth_token"
seen, stop = set(), threading.Event()

def watch():
    while not stop.is_set():
        try:
            seen.add(oct(token.stat().st_mode & 0o777))
        except FileNotFoundError:
            pass
        time.sleep(0.001)

watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
import ray
from tune.ray_start import start_ray

run = SimpleNamespace(address=None, ray_temp_dir=None, num_cpus=1, ship_code=False)
temp_dir = start_ray(SimpleNamespace(run=run))
try:
    used = ray._raylet.AuthenticationTokenLoader.instance().get_token_for_http_header()
finally:
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
stop.set()
watcher.join()
print(json.dumps({"modes": sorted(seen), "token": token.read_text().strip(), "used": json.dumps(used)}))
'''


TOKEN_STEP = r'''
import json, os, sys
from pathlib import Path

os.umask(0o022)
from ray._private.authentication import authentication_token_setup as setup
from tune.ray_internals import create_auth_token_privately

setup.enable_token_auth_by_default()  # what ray.init does for a new local Ray without RAY_AUTH_MODE
made = create_auth_token_privately() if sys.argv[1] == "search" else None
token = Path.home() / ".ray" / "auth_token"
before = token.read_text() if made else None
setup.ensure_token_if_auth_enabled(None, create_token_if_missing=True)  # ray.init's step that writes a token
print(json.dumps({"made": str(made), "mode": oct(token.stat().st_mode & 0o777), "kept": before == token.read_text()}))
'''


def _child_env(home: Path) -> dict[str, str]:
    """An empty HOME, and Ray's default for a local Ray: token auth, no token anywhere."""
    home.mkdir()
    e = env()
    for var in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        e.pop(var, None)
    e.update(HOME=str(home), RAY_TMPDIR="/tmp")
    return e


@pytest.mark.parametrize("who", ["search", "ray"])
def test_the_token_is_written_owner_only_before_ray_would_write_it(who, tmp_path):
    done = subprocess.run([sys.executable, "-c", TOKEN_STEP, who], cwd=REPO, env=_child_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if who == "search":
        assert result == {"made": str(tmp_path / "home" / ".ray" / "auth_token"), "mode": "0o600", "kept": True}
    else:  # Ray 2.60 alone: readable by every user of the machine
        assert result["mode"] == "0o644", result


@pytest.mark.slow
def test_a_local_ray_never_has_its_token_readable_by_others(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, env=_child_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)  # a local Ray's start: minutes on a loaded 2-core machine
    finally:
        kill_session(proc.pid)  # whatever of its Ray is left, by PID
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    token = home / ".ray" / "auth_token"
    assert result["modes"] == ["0o600"], f"the token file was seen with modes {result['modes']}"
    assert oct(token.stat().st_mode & 0o777) == "0o600" and oct(token.parent.stat().st_mode & 0o777) == "0o700"
    assert "note: wrote a new Ray auth token for the local Ray to" in out
    assert result["token"] in result["used"], "the local Ray did not use the token written for it"
