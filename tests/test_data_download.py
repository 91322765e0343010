"""Verified download: a local http.server on 127.0.0.1 serves good, corrupt and truncated copies."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from dpgdiff.data import DataError, load_dataset
from dpgdiff.data.c2dsr import load_c2dsr_folder
from dpgdiff.data.sources import C2DSR_FILES, NamedDataset, download_verified, ensure_files, git_blob_id
from tests.conftest import tok, write_c2dsr_dir


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FileServer:
    """Serves `routes[path] = bytes`; paths in `short` announce the full length but send half and hang up."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.short: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.short else body)
                self.close_connection = True

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # ephemeral port
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_git_blob_id_matches_git(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello\n")
    assert git_blob_id(path) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `echo hello | git hash-object --stdin`


def test_download_success(server, tmp_path):
    data = b"0\tA0\t0\n1\tA1\t1\n"
    server.routes["/P/Alist.txt"] = data
    dest = tmp_path / "P" / "Alist.txt"
    download_verified(f"{server.url}/P/Alist.txt", dest, (blob_id(data),), "P/Alist.txt")
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == ["Alist.txt"]


def test_download_accepts_alternative_blob_id(server, tmp_path):
    crlf = b"a\r\nb\r\n"
    server.routes["/f"] = crlf
    download_verified(f"{server.url}/f", tmp_path / "f", ("0" * 40, blob_id(crlf)), "f")
    assert (tmp_path / "f").read_bytes() == crlf


@pytest.mark.parametrize("damage", ["corrupt", "truncated_body", "short_file"])
def test_bad_download_is_an_error_and_leaves_nothing(server, tmp_path, damage):
    data = b"".join(b"%d\tA%d\t%d\n" % (j, j, j) for j in range(500))
    served = {"corrupt": data[:100] + b"X" + data[101:], "truncated_body": data, "short_file": data[:-7]}[damage]
    server.routes["/P/Alist.txt"] = served
    if damage == "truncated_body":
        server.short.add("/P/Alist.txt")
    dest = tmp_path / "P" / "Alist.txt"
    with pytest.raises(DataError, match=r"P/Alist\.txt") as info:
        download_verified(f"{server.url}/P/Alist.txt", dest, (blob_id(data),), "P/Alist.txt")
    assert any(word in str(info.value) for word in ("truncated", "verification", "IncompleteRead"))
    assert leftovers(dest.parent) == []  # no partial file, no temp file


def test_http_error_names_file(server, tmp_path):
    with pytest.raises(DataError, match=r"P/nothing\.txt: download .* failed"):
        download_verified(f"{server.url}/P/nothing.txt", tmp_path / "x", ("0" * 40,), "P/nothing.txt")
    assert leftovers(tmp_path) == []


def _tiny_pair(tmp_path: Path) -> tuple[Path, NamedDataset]:
    """A tiny C2DSR pair written to `src`, and a NamedDataset whose blob ids are its files'."""
    src = write_c2dsr_dir(
        tmp_path / "src" / "Tiny-Pair", 3, 3, 2,
        valid=[f"0\t0\t{tok(0, 1)}\t{tok(3, 2)}\t{tok(1, 3)}"],
        test=[f"1\t1\t{tok(4, 1)}\t{tok(2, 2)}\t{tok(5, 3)}"],
        train=[f"0\t2\t{tok(0, 1)}\t{tok(4, 2)}"],
    )
    spec = NamedDataset("tiny", "Tiny-Pair", {f: (git_blob_id(src / f),) for f in C2DSR_FILES})
    return src, spec


def test_ensure_files_downloads_then_loads(server, tmp_path):
    src, spec = _tiny_pair(tmp_path)
    for f in C2DSR_FILES:
        server.routes[f"/Tiny-Pair/{f}"] = (src / f).read_bytes()
    folder = tmp_path / "data" / "Tiny-Pair"
    ensure_files(spec, folder, C2DSR_FILES, url=server.url + "/")
    assert leftovers(folder) == sorted(C2DSR_FILES)
    ds = load_c2dsr_folder(folder, "tiny", "c2dsr")
    assert ds.fingerprint == load_c2dsr_folder(src, "tiny", "c2dsr").fingerprint


def test_ensure_files_corrupt_file_is_named_and_not_kept(server, tmp_path):
    src, spec = _tiny_pair(tmp_path)
    for f in C2DSR_FILES:
        server.routes[f"/Tiny-Pair/{f}"] = (src / f).read_bytes()
    server.routes["/Tiny-Pair/userlist.txt"] = b"U0\t0\nU9\t1\n"
    folder = tmp_path / "data" / "Tiny-Pair"
    with pytest.raises(DataError, match=r"Tiny-Pair/userlist\.txt.*verification"):
        ensure_files(spec, folder, C2DSR_FILES, url=server.url)
    assert "userlist.txt" not in leftovers(folder) and not [n for n in leftovers(folder) if n.endswith(".part")]


def test_missing_training_file_suggests_histories_split(server, tmp_path):
    src, spec = _tiny_pair(tmp_path)
    folder = tmp_path / "data" / "Tiny-Pair"
    shutil.copytree(src, folder)
    (folder / "traindata_new.txt").unlink()
    hint = {"traindata_new.txt": "use split c2dsr-histories"}
    with pytest.raises(DataError, match=r"traindata_new\.txt: download .* failed.*c2dsr-histories"):  # 404
        ensure_files(spec, folder, C2DSR_FILES, url=server.url, hint=hint)
    with pytest.raises(DataError, match=r"traindata_new\.txt: file missing .* download is disabled.*c2dsr-histories"):
        ensure_files(spec, folder, C2DSR_FILES, download=False, hint=hint)
    folder.chmod(0o555)  # read-only folder: not even tried
    try:
        with pytest.raises(DataError, match=r"traindata_new\.txt: file missing .* not writable.*c2dsr-histories"):
            ensure_files(spec, folder, C2DSR_FILES, url=server.url, hint=hint)
    finally:
        folder.chmod(0o755)


def test_named_dataset_missing_training_file_message(server, tmp_path):
    with pytest.raises(DataError, match=r"Food-Kitchen/Alist\.txt: download .* failed"):
        load_dataset("food_kitchen", split="c2dsr-histories", data_dir=tmp_path, url=server.url)
    assert leftovers(tmp_path / "Food-Kitchen") == []


def test_missing_named_data_says_where_it_looked_and_leaves_no_empty_folder(server, tmp_path, monkeypatch):
    """No files and no network (here: a mirror without them): the error names the folder it looked in and why,
    and every way to point it elsewhere; the cache folder it made for the download is gone again."""
    from dpgdiff.files import user_cache_root

    monkeypatch.delenv("DPGDIFF_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # an empty home: nothing cached yet
    monkeypatch.setenv("DPGDIFF_DATA_URL", server.url)
    folder = user_cache_root() / "data" / "Food-Kitchen"
    with pytest.raises(DataError) as info:
        load_dataset("food_kitchen", split="c2dsr-histories")
    message = str(info.value)
    for fragment in (f"Looked in {folder.parent} (the per-user cache", "--data-dir", "DPGDIFF_DATA_DIR",
                     "DPGDIFF_DATA_URL", "Food-Kitchen/Alist.txt: download"):
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "cache").exists(), list((tmp_path / "cache").rglob("*"))
    # the files there but not traindata_new.txt, split c2dsr: the flag to use, literally
    given = tmp_path / "given"
    src, _ = _tiny_pair(tmp_path)
    shutil.copytree(src, given / "Food-Kitchen")
    (given / "Food-Kitchen" / "traindata_new.txt").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("food_kitchen", split="c2dsr", data_dir=given)
    assert "--split c2dsr-histories" in str(info.value) and f"Looked in {given} (given by --data-dir)" in str(info.value)
    assert (given / "Food-Kitchen").is_dir(), "a folder that existed before stays"


@pytest.mark.data
def test_food_kitchen_download_from_local_mirror(server, food_kitchen_dir, tmp_path, monkeypatch):
    # Serve copies of the shipped files at the real layout; the pinned blob ids must accept them.
    for f in ("Alist.txt", "Blist.txt", "userlist.txt", "validdata_new.txt", "testdata_new.txt"):
        server.routes[f"/Food-Kitchen/{f}"] = (food_kitchen_dir / f).read_bytes()
    monkeypatch.setenv("DPGDIFF_DATA_URL", server.url)  # the env route, as a user would set it
    ds = load_dataset("food_kitchen", split="c2dsr-histories", data_dir=tmp_path)
    assert (ds.valid.count(0), ds.valid.count(1), ds.test.count(0), ds.test.count(1)) == (2722, 5451, 2747, 5659)
    # Asking for split c2dsr now needs the training file, which the mirror lacks (404).
    with pytest.raises(DataError, match=r"Food-Kitchen/traindata_new\.txt.*c2dsr-histories"):
        load_dataset("food_kitchen", split="c2dsr", data_dir=tmp_path)
    assert not (tmp_path / "Food-Kitchen" / "traindata_new.txt").exists()
