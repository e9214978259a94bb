"""Engine creation and the few SQL helpers that differ between SQLite and PostgreSQL.

SQLite is the embedded default (one file, WAL journal so the in-process worker threads
can read while one writes, a busy timeout instead of "database is locked"). PostgreSQL
is production. Anything dialect-specific in loyalcast's SQL lives here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Integer,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.functions import FunctionElement

SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(url: str, *, pool: bool = True, pool_size: int = 10) -> Engine:
    """An engine for ``url`` with loyalcast's connection settings applied.

    ``pool_size`` connections are kept open (PostgreSQL); more are opened when needed
    and closed when returned, which costs a new server process each time, so it should
    cover the process's threads. ``pool=False`` gives a NullPool (one connection per
    checkout), which forked worker processes and short-lived CLI commands want.
    """
    kwargs: dict[str, Any] = {"future": True}
    database = make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    dialect = engine_dialect(url)
    if dialect == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    if dialect == "postgresql":
        # Every loyalcast query is chunked and short: JIT compilation (about 70 ms for a
        # planning chunk, measured with EXPLAIN ANALYZE) costs more than it ever saves.
        kwargs["connect_args"] = {"options": "-c jit=off"}
    if not pool:
        kwargs["poolclass"] = NullPool
    elif dialect != "sqlite":
        kwargs["pool_size"] = pool_size
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def engine_dialect(url: str) -> str:
    """``"postgresql"``, ``"sqlite"``, ... for a database URL."""
    return make_url(url).get_backend_name()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_function("lc_bucket", 2, bucket, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


BUCKETS = 10_000


def bucket(salt: str, member_id: int) -> int:
    """A member's stable pseudo-random bucket in ``[0, BUCKETS)`` for ``salt``.

    The first 28 bits of ``md5("salt:member_id")``; PostgreSQL computes the same value
    in SQL (see ``holdout_bucket``), so both databases draw the same control group.
    """
    return int(hashlib.md5(f"{salt}:{member_id}".encode()).hexdigest()[:7], 16) % BUCKETS


class holdout_bucket(FunctionElement[int]):
    """SQL expression for ``bucket(salt, member_id)``."""

    type = Integer()
    inherit_cache = True
    name = "holdout_bucket"


@compiles(holdout_bucket, "postgresql")
def _bucket_postgresql(element: holdout_bucket, compiler: Any, **kw: Any) -> str:
    salt, member_id = list(element.clauses)
    return (
        f"mod(('x' || substr(md5(CAST({compiler.process(salt, **kw)} AS text) || ':' || "
        f"CAST({compiler.process(member_id, **kw)} AS text)), 1, 7))::bit(28)::int, {BUCKETS})"
    )


@compiles(holdout_bucket, "sqlite")
def _bucket_sqlite(element: holdout_bucket, compiler: Any, **kw: Any) -> str:
    return f"lc_bucket({compiler.process(element.clauses, **kw)})"


def upsert_insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` for ``table`` in the connection's dialect, with ``on_conflict_do_nothing``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {conn.dialect.name!r}")


def in_ids(conn: Connection, column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN (ids)``; on PostgreSQL ``column = ANY(:array)``.

    One array parameter keeps the statement's text the same for every batch, so psycopg
    parses it once and has the server prepare it; an IN list of 500 ids is 500
    parameters in a statement that differs in length from batch to batch (its parsing
    alone was 3% of a sending worker's time).
    """
    if conn.dialect.name == "postgresql":
        matches: ColumnElement[bool] = column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(column.type)))
        return matches
    within: ColumnElement[bool] = column.in_(ids)
    return within
