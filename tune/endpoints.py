"""What a command talks to, checked before Ray starts: the MLflow tracking URI and a Ray cluster's address.

An MLflow server that does not answer makes MLflow retry for minutes before a traceback, and a missing SQLite
folder makes it create a new store (a typo then starts an empty one). So a tracking URI is checked by scheme
(MLflow's own table), then by what is there: a local SQLite store must be whole (tune/stores.py), a server must
answer MLflow's REST API within seconds (`CONNECT_TIMEOUT_S`), not only accept a connection. tune/search.py,
tune/confirm.py and tune/report.py all check the same way. A Ray cluster's address must answer Ray's own
handshake (`check_address`), and an s3:// storage path's bucket a HeadBucket call (`check_storage_uri`), both
within seconds. The handshake runs in a child process; resolving `--address auto` imports Ray (the commands
set Ray's auth mode first).
"""

from __future__ import annotations

import json
import os
import socket
import time
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
# Ray's GCS handshake: its client's wait per connection, for the cluster ID, and for the child process that runs it
# to import Ray (seconds on a loaded machine)
GCS_CONNECT_S, GCS_ANSWER_S, GCS_CHILD_START_S = 2.0, 3.0, 30.0
S3_CONNECT_S, S3_ANSWER_S = 3.0, 10.0  # an s3:// storage path's endpoint: to accept a connection, to answer
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


def check_storage_uri(uri: str, source: str = "--storage-path") -> None:
    """An s3:// storage path: its bucket must answer a HeadBucket call within seconds (S3_CONNECT_S to connect,
    S3_ANSWER_S to answer, no retry), at the endpoint and with the credentials Tune will use (pyarrow's, from
    the AWS_* variables or the URI's ?endpoint_override=...). Tune itself retries an unreachable endpoint for
    minutes, after Ray started. Other URIs are left to Tune."""
    if not uri.startswith("s3://"):
        return
    import pyarrow.fs as pafs

    try:
        fs, _ = pafs.FileSystem.from_uri(uri)
        options = fs.__reduce__()[1][0]  # the filesystem's options as pickled: what from_uri resolved
        quick = pafs.S3FileSystem(**{**options, "connect_timeout": S3_CONNECT_S, "request_timeout": S3_ANSWER_S,
                                     "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1)})
        bucket = urlparse(uri).netloc
        endpoint = options.get("endpoint_override") or "AWS S3"
        found = quick.get_file_info(bucket).type
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its AWS errors OSErrors
        raise SearchError(f"{source} {uri}: the bucket cannot be reached ({str(exc).splitlines()[0][:300]}); check "
                          "AWS_ENDPOINT_URL and the AWS_* credentials (README: On a multi-node GPU cluster)") from None
    if found == pafs.FileType.NotFound:
        raise SearchError(f"{source} {uri}: no bucket {bucket!r} at {endpoint}; create it first, or fix the URI or "
                          "AWS_ENDPOINT_URL")


def check_address(address: Optional[str]) -> Optional[str]:
    """--address checked by protocol before the driver imports Ray -> the address to join ('auto' resolved to
    HOST:PORT, so that the search joins the cluster that was checked; None, 'local' and ray:// client addresses as
    given, left to Ray). A Ray cluster's GCS must accept a connection within CONNECT_TIMEOUT_S and answer Ray's own
    handshake (tune/ray_internals.py's gcs_handshake) within seconds: `ray.init` waits minutes for something that
    is not Ray, or a cluster that refuses this machine's token."""
    if address in (None, "local") or "://" in str(address):
        return address
    source = "--address auto"
    if address == "auto":
        address, where = _resolve_auto()
        source += f" ({where}: {address})"
    else:
        source = f"--address {address}"
        if os.environ.get("RAY_ADDRESS", address) not in (address, "auto"):  # ray.init takes $RAY_ADDRESS over it
            raise SearchError(f"{source}: $RAY_ADDRESS is {os.environ['RAY_ADDRESS']}, and Ray would join that one; "
                              "unset RAY_ADDRESS, or pass the same address")
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SearchError(f"{source}: expected 'auto' or HOST:PORT (a Ray cluster's GCS address)")
    reason = unreachable(host.strip("[]"), int(port))
    if reason:
        raise SearchError(f"{source}: no Ray cluster answers there ({reason}); start it (ray start --head) or fix "
                          "the address")
    from tune import ray_internals

    limit = GCS_CONNECT_S * 2 + GCS_ANSWER_S + GCS_CHILD_START_S
    print(f"checking the Ray cluster at {address} (Ray's GCS handshake, at most {limit:g} s) ...", flush=True)
    t0 = time.monotonic()
    ok, detail = ray_internals.gcs_handshake(address, GCS_CONNECT_S, GCS_ANSWER_S, limit)
    if ok:
        print(f"Ray cluster {detail[:12]} at {address}: answered in {time.monotonic() - t0:.1f} s", flush=True)
        return address
    if "Authentication" in detail or "Unauthenticated" in detail:
        raise SearchError(f"{source}: the Ray cluster there refused this machine's auth token "
                          f"(${ray_internals.AUTH_TOKEN_PATH_ENV} or ~/.ray/auth_token, with RAY_AUTH_MODE=token): "
                          "copy the head's token here (README: On a multi-node GPU cluster)")
    raise SearchError(f"{source}: something accepts connections there, but not as a Ray cluster's GCS (Ray's "
                      f"handshake: {detail.splitlines()[0][:300]}); pass the head's GCS address (ray start --head "
                      "--port, 6379 by default)")


def _resolve_auto() -> tuple[str, str]:
    """What --address auto joins -> (HOST:PORT, where it was found): $RAY_ADDRESS, else the cluster the last
    `ray start --head` of this machine recorded, else the one Ray GCS running here. Ray's own 'auto' also takes
    any one of several running GCSs (another search's local Ray among them): several are refused here."""
    if os.environ.get("RAY_ADDRESS", "auto") != "auto":
        return os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
    from tune import ray_internals

    recorded, record_file, running = ray_internals.auto_address_sources()
    if recorded:
        return recorded, f"recorded by the last `ray start --head` in {record_file}"
    if len(running) == 1:
        return running[0], "the one Ray GCS process running on this machine"
    if running:
        raise SearchError(f"--address auto: {len(running)} Ray instances run on this machine ({', '.join(running)}) "
                          f"and none is recorded in {record_file}; pass the cluster's --address HOST:PORT")
    raise SearchError(f"--address auto: no Ray cluster runs on this machine (no $RAY_ADDRESS, nothing recorded in "
                      f"{record_file}, no Ray GCS process); start one (ray start --head), or pass --address "
                      "HOST:PORT of a remote head, or leave --address out for a local Ray of the search's own")
