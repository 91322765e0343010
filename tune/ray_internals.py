"""The one place that uses a Ray name outside its public API, checked so a Ray upgrade fails loudly.

Ray offers no public way to give `ray.init` (local) its own temp directory: the per-search temp
dir keeps the socket paths short (they must stay under 107 bytes) and lets the driver remove
everything its Ray wrote. `ray.init`'s `_temp_dir` keyword does it (documented in ray.init's
docstring, underscored). `init_local_ray` checks the effect, the session folder under that temp
dir (Ray's documented layout: <temp dir>/session_latest), and raises RayInternalsChanged when it
is missing, instead of a search that silently starts Ray somewhere else
(tests/test_settings.py checks that it does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMP_DIR_KEYWORD = "_temp_dir"  # ray.init's keyword for the root temp dir of a local Ray


class RayInternalsChanged(RuntimeError):
    """The installed Ray no longer honours an internal name this project relies on."""


def session_dir(temp_dir: str) -> Path:
    """The local Ray session folder under `temp_dir` (resolved; it is a symlink to session_<date>_<pid>)."""
    return Path(temp_dir, "session_latest").resolve()


def init_local_ray(temp_dir: str, **kwargs: Any) -> Path:
    """`ray.init(address="local", **kwargs)` with its root temp dir at `temp_dir` -> the session folder."""
    import ray

    ray.init(address="local", **{TEMP_DIR_KEYWORD: temp_dir}, **kwargs)
    if not Path(temp_dir, "session_latest").exists():
        ray.shutdown()
        raise RayInternalsChanged(
            f"ray {ray.__version__}: ray.init({TEMP_DIR_KEYWORD}={temp_dir!r}) started Ray elsewhere (no "
            f"session_latest there); update tune/ray_internals.py")
    return session_dir(temp_dir)
