"""Where dataset files live: data-dir resolution, the pinned public copies, verified download.

Data dir: an explicit `data_dir` (CLI --data-dir) > env DPGDIFF_DATA_DIR > the per-user cache
($XDG_CACHE_HOME/dpgdiff/data, default ~/.cache/dpgdiff/data). Each named dataset is a folder in it.
A missing file is fetched from the FedCSR repository at a pinned commit (base URL overridable with
env DPGDIFF_DATA_URL) and accepted only if its git blob id matches the one recorded below. Derived files
(evaluation candidates) never go into the data dir: env DPGDIFF_DERIVED_DIR, else the per-user cache.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dpgdiff.data.dataset import DataError
from dpgdiff.files import user_cache_root  # noqa: F401  (re-exported: dpgdiff.data.user_cache_root)

ENV_DATA_DIR = "DPGDIFF_DATA_DIR"
ENV_DATA_URL = "DPGDIFF_DATA_URL"
ENV_DERIVED_DIR = "DPGDIFF_DERIVED_DIR"  # where derived files go (default: the per-user cache)
PINNED_COMMIT = "0f07854cb7233bd14ded0e3a5599b664545468d3"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/zhengdongyi-sysu/FedCSR/{PINNED_COMMIT}/dataset"
DOWNLOAD_TIMEOUT_S = 60.0

# The six files of the C2DSR format, in the order the reader needs them.
VOCAB_X, VOCAB_Y, USERS = "Alist.txt", "Blist.txt", "userlist.txt"
TRAIN, VALID, TEST = "traindata_new.txt", "validdata_new.txt", "testdata_new.txt"
C2DSR_FILES = (VOCAB_X, VOCAB_Y, USERS, TRAIN, VALID, TEST)


@dataclass(frozen=True)
class NamedDataset:
    """A published C2DSR pair: its folder name and the git blob ids a file must have."""

    name: str
    folder: str
    blob_ids: dict[str, tuple[str, ...]]  # file -> accepted `git hash-object` ids (LF first, then CRLF copies)


# Blob ids from ../shared/data/README.md (the data README of this project).
NAMED_DATASETS: dict[str, NamedDataset] = {
    "food_kitchen": NamedDataset(
        "food_kitchen",
        "Food-Kitchen",
        {
            VOCAB_X: ("04fdb1e31b8dffeb8ff8f99a9daa9e035b018287",),
            VOCAB_Y: ("34253d2c7ffb13b363fc27a40b59f562c559fee4",),
            USERS: ("1849767965821e976e7ff1d7c7890dca0c09b304",),
            VALID: ("63a8479579f5247efb6bfcb545f9dc123ae4e192",),
            TEST: ("28211e1346bff079e49bbba6570be06f9a8f5112",),
            TRAIN: ("99e82e1fc8dad0bac3ab817e44f1c25e8a069bd2", "54f46204745ab8d3ca399f11fe61bc8ca191bb51"),
        },
    ),
    "movie_book": NamedDataset(
        "movie_book",
        "Movie-Book",
        {
            VOCAB_X: ("800b0755e3ff0f8c940c295653ba21743a8210a4",),
            VOCAB_Y: ("1bac0b92aa9a32b4428be8ffb351b7f7650d89de",),
            USERS: ("cddd2c454da570ec5c970df5de877448d42b0db3",),
            VALID: ("28ede73f03c0ee8a1d656a8513897895e14d94d1",),
            TEST: ("ea8cb79cb11cea368c0237ca85e5032d8dd7e5b7",),
            TRAIN: ("ac129295471de1a2dfdbbabbee0cd97641182650", "4c3f70eef95db97ecd33838a3e505c0f3513553d"),
        },
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument > env DPGDIFF_DATA_DIR > per-user cache (…/dpgdiff/data)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return user_cache_root() / "data"


def describe_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """Which data folder `resolve_data_dir` picks and why, with the ways to choose another (for errors)."""
    folder = resolve_data_dir(data_dir)
    if data_dir is not None and str(data_dir) != "":
        why = "given by --data-dir"
    elif os.environ.get(ENV_DATA_DIR):
        why = f"from {ENV_DATA_DIR}"
    else:
        why = f"the per-user cache: no --data-dir and no {ENV_DATA_DIR}"
    return (f"Looked in {folder} ({why}). Put the dataset's folder there, point --data-dir or {ENV_DATA_DIR} at "
            f"a folder that holds it, or set {ENV_DATA_URL} to a reachable copy of the files.")


def is_writable_dir(path: Path) -> bool:
    """True if `path` (or, when missing, its nearest existing parent) accepts new files."""
    probe = Path(path)
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    # The mode check matters for root, for whom os.access says yes even on a chmod a-w folder.
    mode = probe.stat().st_mode
    has_write_bit = bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return probe.is_dir() and has_write_bit and os.access(probe, os.W_OK | os.X_OK)


def derived_cache_dir(name: str, split: str, fingerprint: str) -> Path:
    """Where derived files (evaluation candidates, ...) of a loaded dataset go: env DPGDIFF_DERIVED_DIR, else the
    per-user cache (…/dpgdiff/derived), in a folder <name>-<split>-<fp12> (created here when it can be).

    Never the data folder: it may be shared with others or read-only. The fingerprint keys the folder, so a changed
    file or split never reuses stale derived files; a process that cannot create it (or finds it empty, e.g. a Ray
    worker on another node) draws the same files again from their seeds (dpgdiff/evaluation/candidates.py)."""
    root = Path(os.environ.get(ENV_DERIVED_DIR) or user_cache_root() / "derived").expanduser()
    path = root / f"{name}-{split}-{fingerprint[:12]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # not creatable here: the writer warns with the path and uses what it drew unsaved
    return path


def git_blob_id(path: Path) -> str:
    """What `git hash-object FILE` prints: sha1 over b"blob <size>\\0" + content."""
    size = path.stat().st_size
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_url(override: str | None = None) -> str:
    """Parameter > env DPGDIFF_DATA_URL > the pinned FedCSR commit. No trailing slash."""
    return (override or os.environ.get(ENV_DATA_URL) or DEFAULT_BASE_URL).rstrip("/")


def download_verified(url: str, dest: Path, blob_ids: tuple[str, ...], label: str) -> None:
    """Fetch `url` into `dest` only if its git blob id is one of `blob_ids`.

    The bytes go to a temp file in dest's folder and are renamed into place after verification,
    so a failed, truncated or corrupt download never leaves a file behind. Errors are DataError
    naming `label` (e.g. "Food-Kitchen/Alist.txt").
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                expected = response.headers.get("Content-Length")
                # http.client raises IncompleteRead when the body is shorter than Content-Length.
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # incl. IncompleteRead, timeouts
            raise DataError(f"{label}: download from {url} failed ({type(exc).__name__}: {exc})") from exc
        size = tmp.stat().st_size
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise DataError(f"{label}: download from {url} is truncated ({size} of {expected} bytes)")
        got = git_blob_id(tmp)
        if got not in blob_ids:
            raise DataError(
                f"{label}: downloaded file from {url} failed verification (git blob id {got}, "
                f"{size} bytes; expected {' or '.join(blob_ids)}): corrupt or truncated, not used"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_files(
    spec: NamedDataset,
    folder: Path,
    files: tuple[str, ...],
    *,
    download: bool = True,
    url: str | None = None,
    hint: dict[str, str] | None = None,
    where: str = "",
) -> None:
    """Make sure every file of `files` exists in `folder`, downloading (and verifying) missing ones.

    `hint` maps a file to extra advice appended when it cannot be had (e.g. use another split); `where` (e.g.
    `describe_data_dir`) follows it. Folders made here for a download that failed are removed again when empty.
    """
    hint = hint or {}
    missing = [name for name in files if not (folder / name).is_file()]
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        for name in missing:
            label = f"{spec.folder}/{name}"
            advice = "".join(f" {a}" for a in (hint.get(name), where) if a)
            if not download:
                raise DataError(f"{label}: file missing in {folder} and download is disabled.{advice}")
            if not is_writable_dir(folder):
                raise DataError(f"{label}: file missing in {folder}, which is not writable, so it cannot be "
                                f"downloaded.{advice}")
            try:
                download_verified(f"{base_url(url)}/{spec.folder}/{name}", folder / name, spec.blob_ids[name], label)
            except DataError as exc:
                raise DataError(f"{exc}{advice}") from exc
    except DataError:
        for path in made:  # nothing half-made left behind: only the empty folders this call created
            try:
                path.rmdir()
            except OSError:
                break
        raise
