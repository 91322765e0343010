"""Cheap commits for the search's local SQLite stores (MLflow's mlflow.db, Optuna's optuna.db).

The driver commits to them several times per trial (a run created, its params, every epoch's metrics, its end; the
study's ask, each sampled parameter, each intermediate value, the tell). In SQLite's default rollback-journal mode
every commit waits for several fsyncs: on a loaded 2-core machine about 25 ms each, which made SQLite commits the
largest part of the project's driver time at 100 trials (bench/scale_search.py, BENCHMARKS.md "Issue 41").

`fast_commits()` puts every SQLite connection SQLAlchemy opens in this process into write-ahead-log mode with
synchronous=NORMAL (SQLite's recommended pairing): a commit appends to the log without an fsync, the store never
corrupts, and a killed driver loses nothing (the log is in the OS's cache); only a power cut or OS crash can
drop the last commits. WAL mode is a property of the database file (readers such as `mlflow ui` and
optuna-dashboard use it too) and needs a local filesystem: keep SQLite stores off network filesystems (NFS), as
SQLite itself advises; a cluster's stores are servers (README, "On a multi-node GPU cluster").

A store being built under a temporary name (tracking.create_sqlite_store, CREATING_SUFFIX) keeps the rollback journal:
it is linked to its real name when complete, and its content must be in the file itself then, not in a log.
"""

from __future__ import annotations

import sqlite3
from typing import Any

CREATING_SUFFIX = ".creating"  # tracking.create_sqlite_store's temporary store names end so


def fast_commits() -> None:
    """Register (once per process) the connect hook that sets WAL + synchronous=NORMAL on SQLite connections."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return  # PostgreSQL, MySQL, ...: their own settings
    try:
        files = [row[2] for row in dbapi_connection.execute("PRAGMA database_list") if row[1] == "main"]
        if not files or not files[0] or files[0].endswith(CREATING_SUFFIX):  # in memory, or being built
            return
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:  # e.g. locked by another process right now: this connection keeps SQLite's defaults
        pass
