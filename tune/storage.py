"""Small text files beside a search's Tune state, in a local folder or at a storage URI (s3://..., gs://...).

A search's --storage-path may be a pyarrow filesystem URI, where Tune keeps its experiment state; the files the
search keeps beside that state (the settings a resume reads, the drivers' times, a confirmation's jobs) go
there too, through these two functions. Nothing here imports Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dpgdiff.files import atomic_write_text


def write_text(uri: str, text: str) -> None:
    """Write a small text file to a local path (atomically) or a pyarrow filesystem URI (s3://...)."""
    if "://" not in uri:
        atomic_write_text(Path(uri), text)
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(uri: str) -> Optional[str]:
    """The text of a local path or URI; None when it does not exist."""
    if "://" not in uri:
        p = Path(uri)
        return p.read_text() if p.exists() else None
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.readall().decode()
