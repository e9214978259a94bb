"""Engine creation and the few SQL helpers that differ between SQLite and PostgreSQL.

SQLite is the embedded default (one file, WAL journal so the in-process worker threads
can read while one writes, a busy timeout instead of "database is locked"). PostgreSQL
is production. Anything dialect-specific in loyalcast's SQL lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(url: str, *, pool: bool = True) -> Engine:
    """An engine for ``url`` with loyalcast's connection settings applied.

    ``pool=False`` gives a NullPool (one connection per checkout), which forked worker
    processes and short-lived CLI commands want.
    """
    kwargs: dict[str, Any] = {"future": True}
    database = make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    if not pool:
        kwargs["poolclass"] = NullPool
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def upsert_insert(conn: Connection, table: Table):  # type: ignore[no-untyped-def]
    """``INSERT`` for ``table`` in the connection's dialect, with ``on_conflict_do_nothing``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {conn.dialect.name!r}")


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"
