"""How a store URL becomes a SQLAlchemy engine: the URL forms we accept and each dialect's connection setup."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflow_engine.store.base import StoreError

Dialect = Literal["sqlite", "postgresql"]

_SCHEMES: dict[str, Dialect] = {
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+asyncpg": "postgresql",
}
# SQLite runs on the stdlib driver on a store-owned thread (see runner.py); `sqlite+aiosqlite` URLs are accepted
# for familiarity and mean the same database.
_DRIVERS: dict[Dialect, str] = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+asyncpg"}
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# WAL lets readers (other processes, `sqlite3` in a shell) run beside the writer; NORMAL skips the fsync per
# commit, which WAL makes safe against corruption (a power cut may lose the last commits, a crash of the process
# loses nothing); busy_timeout makes a second process wait for the write lock instead of failing at once.
SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=10000",  # first: switching to WAL below may itself have to wait for another process
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL: which dialect, the SQLAlchemy URL, and our own options taken out of the query."""

    display: str
    dialect: Dialect
    sa_url: URL
    pg_schema: str | None = None
    pool_size: int = 10
    server_settings: tuple[tuple[str, str], ...] = ()


def parse_store_url(url: str) -> StoreUrl:
    """Parse `sqlite:///PATH`, `sqlite:///:memory:` or `postgresql://user@host:port/db?schema=&pool_size=`."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        # The text is not echoed: a URL that failed to parse may still carry a password.
        raise StoreError("store URL is not a URL (expected sqlite:///PATH or postgresql://...)") from exc
    dialect = _SCHEMES.get(parsed.drivername)
    if dialect is None:
        raise StoreError(
            f"store URL scheme '{parsed.drivername}' is not supported (use sqlite:///PATH or postgresql://...)"
        )
    parsed = parsed.set(drivername=_DRIVERS[dialect])
    if dialect == "sqlite":
        # Written out by hand: SQLAlchemy would escape `:memory:` as `%3Amemory%3A` in logs.
        display = f"sqlite:///{parsed.database or ':memory:'}"
        if parsed.query:
            raise StoreError(f"store URL '{display}': SQLite takes no query parameters")
        return StoreUrl(display, dialect, parsed)
    return _parse_postgresql(parsed, parsed.set(drivername=dialect).render_as_string(hide_password=True))


def _parse_postgresql(parsed: URL, display: str) -> StoreUrl:
    query = dict(parsed.query)
    schema = _single(query.pop("schema", None), display)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise StoreError(f"store URL '{display}': schema '{schema}' must be a plain identifier")
    pool_size_text = _single(query.pop("pool_size", None), display) or "10"
    if not pool_size_text.isdigit() or int(pool_size_text) < 1:
        raise StoreError(f"store URL '{display}': pool_size '{pool_size_text}' must be a positive integer")
    settings: dict[str, str] = {}
    application_name = _single(query.pop("application_name", None), display)
    if application_name is not None:
        settings["application_name"] = application_name
    if schema is not None:
        # Quoted so that the name is taken as written, matching `CREATE SCHEMA "name"` in the migrations.
        settings["search_path"] = f'"{schema}"'
    # libpq spells it sslmode; asyncpg takes the same values as `ssl`.
    sslmode = query.pop("sslmode", None)
    if sslmode is not None:
        query["ssl"] = sslmode
    return StoreUrl(
        display,
        "postgresql",
        parsed.set(query=query),
        pg_schema=schema,
        pool_size=int(pool_size_text),
        server_settings=tuple(sorted(settings.items())),
    )


def _single(value: str | tuple[str, ...] | None, display: str) -> str | None:
    if isinstance(value, tuple):
        raise StoreError(f"store URL '{display}': a query parameter is given more than once")
    return value


def create_sync_engine_for(target: StoreUrl) -> sa.Engine:
    """The SQLite engine: autocommit (a single-statement write needs no BEGIN/COMMIT; migrations BEGIN IMMEDIATE
    themselves) and the pragmas above on every connection."""
    engine = sa.create_engine(target.sa_url, isolation_level="AUTOCOMMIT")
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def create_async_engine_for(target: StoreUrl) -> AsyncEngine:
    """The PostgreSQL engine: an asyncpg pool whose connections autocommit, so a single-statement write is one
    round trip; the few transactions open one explicitly.

    At most 2 x `pool_size` connections, all of them kept once opened: no "overflow" connections. SQLAlchemy
    closes an overflow connection at every check-in while the pool holds `pool_size` idle ones, so with more
    concurrent statements than `pool_size` almost every checkout opened a new connection (a new backend on the
    server, asyncpg's connect and SSL negotiation, statements prepared again): measured by bench/durable.py,
    0.4 new connections per execution and less than half the throughput at 16 concurrent executions."""
    connect_args: dict[str, Any] = {}
    if target.server_settings:
        connect_args["server_settings"] = dict(target.server_settings)
    return create_async_engine(
        target.sa_url,
        isolation_level="AUTOCOMMIT",
        pool_size=2 * target.pool_size,
        max_overflow=0,
        connect_args=connect_args,
    )


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            if pragma == _WAL:
                _switch_to_wal(cursor)
            else:
                cursor.execute(pragma)
    finally:
        cursor.close()


_WAL = "PRAGMA journal_mode=WAL"
# How long a connection keeps trying to switch a new database file to WAL while other processes open it too.
_WAL_PATIENCE = 10.0


def _switch_to_wal(cursor: Any) -> None:
    """Set WAL mode, waiting for other connections doing the same: the switch needs an exclusive lock, and
    SQLite answers "database is locked" at once instead of calling the busy handler when several connections
    open a new file together (replicas starting at once). A file already in WAL mode needs no switch."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + _WAL_PATIENCE
    delay = 0.005
    while True:
        try:
            cursor.execute(_WAL)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
