"""Files in and out: atomic writes (a reader never sees half a file, a crash never leaves one) and YAML reads
that name the file and line of every error.

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
from typing import Any, Callable, Optional

import yaml


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


def read_yaml(path: str | os.PathLike, what: str, error: type[Exception]) -> tuple[Any, str]:
    """(safe_load'ed data, raw text) of a YAML file; unreadable or invalid files raise `error` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise error(f"{path}: line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); "
                    f"save the {what} as UTF-8") from None
    return parse_yaml(text, str(path), error), text


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (plain PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined on line {first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str, error: type[Exception]) -> Any:
    """safe_load'ed `text` (duplicate keys refused); invalid YAML raises `error` naming `source` (a file, or
    where the text came from) and the line."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is None:
            raise error(f"{source}: not valid YAML: {exc}") from exc
        problem = ", ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None))))
        raise error(f"{source}: not valid YAML, line {mark.line + 1} column {mark.column + 1}: {problem}") from exc
