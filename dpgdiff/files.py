"""Atomic files and folders: a reader never sees half a file, a crash never leaves one.

Every file the package writes (configs, metrics, checkpoints, cached candidates) goes through
`atomic_write`: the content is written to a temp file in the destination folder, then renamed over
the destination (`os.replace`, atomic on POSIX within one filesystem). Folders (training
checkpoints) are swapped in with `replace_dir`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional


def user_cache_root() -> Path:
    """The per-user cache folder: $XDG_CACHE_HOME/dpgdiff or ~/.cache/dpgdiff (datasets, the MKL shim)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpgdiff"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], mode: Optional[int] = None) -> None:
    """Call `write(temp_path)` to fill a temp file beside `path`, then rename it to `path`.

    mode: file permissions to set before the rename (mkstemp creates 0600 files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: Optional[int] = None) -> None:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), mode)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place; the previous one survives until the new one is in."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
