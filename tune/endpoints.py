"""What a command talks to, checked before Ray starts: the MLflow tracking URI and a Ray cluster's address.

An MLflow server that does not answer makes MLflow retry for minutes before a traceback, and a missing SQLite
folder makes it create a new store (a typo then starts an empty one). So a tracking URI is checked by scheme
(MLflow's own table), then by what is there: a local SQLite store must be whole (tune/stores.py), a server must
answer MLflow's REST API within seconds (`CONNECT_TIMEOUT_S`), not only accept a connection. tune/search.py,
tune/confirm.py and tune/report.py all check the same way. Nothing here imports Ray.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from tune.errors import SearchError
from tune.stores import check_sqlite_store, sqlite_file

# MLflow's tracking store schemes ("" = a local folder), when its own table cannot be read
TRACKING_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
CONNECT_TIMEOUT_S = 3.0  # how long a server (MLflow, a Ray cluster's GCS) may take to accept a connection
# ... and an MLflow server to answer its first call (it opens its store then: seconds on a loaded machine)
ANSWER_TIMEOUT_S = 20.0
# A cheap call every MLflow tracking server answers with JSON (an object; an error object when auth is required)
MLFLOW_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


def tracking_uri_source(flag_given: bool) -> str:
    """How errors name where the tracking URI came from."""
    return ("--tracking-uri" if flag_given else
            "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking URI")


def check_tracking_uri(uri: str, source: str) -> None:
    """Refuse a tracking URI whose scheme MLflow has no store for, an MLflow server that does not answer as one,
    a SQLite store in a missing folder, or a broken one. `source` names where the URI came from."""
    from mlflow.exceptions import MlflowException

    try:  # MLflow's own scheme table, plugins included (not public API: fall back to its documented schemes)
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry
    except ImportError:
        registry = None
    scheme = urlparse(uri).scheme
    known = scheme in TRACKING_SCHEMES
    if registry is not None and hasattr(registry, "get_store_builder"):
        try:
            registry.get_store_builder(uri)
            known = True
        except (MlflowException, KeyError):
            known = False
    if not known:
        raise SearchError(f"{source} {uri}: unknown tracking URI scheme {scheme!r}; use one of "
                          f"{', '.join(s + ':' for s in TRACKING_SCHEMES[1:])}")
    _check_tracking_target(uri, source)


def _check_tracking_target(uri: str, source: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        # MLflow 3 refuses its file store when the store opens (inside a trial, after Ray started) unless told to
        folder = Path(parsed.path if parsed.scheme == "file" else uri).resolve()
        raise SearchError(f"{source} {uri}: MLflow 3 refuses a plain file store; use a SQLite store in that folder, "
                          f"--tracking-uri sqlite:///{folder / 'mlflow.db'} (or set MLFLOW_ALLOW_FILE_STORE=true "
                          "to keep the file store)")
    if parsed.scheme in ("http", "https"):
        reason = not_mlflow(uri)
        if reason:
            raise SearchError(f"{source} {uri}: {reason}; start it (mlflow server --host 127.0.0.1 ...) or fix "
                              "the URI")
    elif sqlite_file(uri) is not None:
        db = sqlite_file(uri)
        if not db.parent.is_dir():
            raise SearchError(f"{source} {uri}: the folder {db.parent} does not exist; create it first (the store "
                              "file itself is created)")
        check_sqlite_store(db, "MLflow store", "--tracking-uri")


def not_mlflow(uri: str, timeout: float = ANSWER_TIMEOUT_S) -> Optional[str]:
    """Why the server at `uri` is not an MLflow tracking server that accepts a connection within CONNECT_TIMEOUT_S
    and answers MLflow's REST API within `timeout` seconds, or None."""
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    reason = unreachable(parsed.hostname or "", port)
    if reason:
        return f"no MLflow server answers at {parsed.hostname}:{port} ({reason})"
    url = uri.rstrip("/") + MLFLOW_PROBE
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310  http(s) only, checked above
            status, body = answer.status, answer.read(65536)
    except urllib.error.HTTPError as exc:  # an MLflow error (auth, permissions) is still JSON with an error_code
        status, body = exc.code, exc.read(65536)
    except (OSError, ValueError) as exc:
        return f"the server at {parsed.hostname}:{port} did not answer GET {MLFLOW_PROBE} within {timeout:g} s ({exc})"
    try:
        data = json.loads(body or b"null")
    except ValueError:
        data = None
    if not isinstance(data, dict) or (status != 200 and "error_code" not in data):
        return (f"the server at {parsed.hostname}:{port} answers, but not as MLflow (GET {MLFLOW_PROBE} -> HTTP "
                f"{status}, {'JSON' if data is not None else 'not JSON'})")
    return None


def unreachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """Why a TCP connection to host:port fails within `timeout` seconds, or None when it opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return f"{exc.strerror or exc} within {timeout:g} s"


def check_address(address: Optional[str]) -> None:
    """--address HOST:PORT must accept a connection (Ray's own client waits for minutes, and may rewrite the
    address); 'auto', 'local' and ray:// client addresses are left to Ray."""
    if address in (None, "auto", "local") or "://" in str(address):
        return
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SearchError(f"--address {address}: expected 'auto' or HOST:PORT (a Ray cluster's GCS address)")
    reason = unreachable(host.strip("[]"), int(port))
    if reason:
        raise SearchError(f"--address {address}: no Ray cluster answers there ({reason}); start it (ray start "
                          "--head) or fix the address")
