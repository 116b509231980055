"""How each dialect runs a statement: the only place where SQLite and PostgreSQL execution differ.

- PostgreSQL: SQLAlchemy's async engine on an asyncpg pool; each call checks a connection out for its statement.
  Connections autocommit, so a single-statement write is one round trip (no BEGIN/COMMIT). Group commit batches
  run on the pooled connection's asyncpg connection itself (`driver_transaction`).
- SQLite: SQLAlchemy's sync engine on the stdlib driver, with one connection living on one thread that the store
  owns. Every call is one hop to that thread. (Measured: aiosqlite through SQLAlchemy makes three thread hops per
  statement — cursor, execute, close — about 4x slower per checkpoint.) The single thread also serialises every
  statement, so a transaction (a migration) never interleaves with another coroutine's statements, and a
  `:memory:` database lives exactly as long as that connection. A caller cancelled mid-call does not stop the
  statement: it completes on the thread, as it would on a server.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.base import Executable

from workflow_engine.store.base import StoreError
from workflow_engine.store.connect import StoreUrl, create_async_engine_for, create_sync_engine_for

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a statement returned, fully read: its rows (RETURNING or SELECT) and the rows it changed."""

    rows: list[Row[Any]]
    rowcount: int


def outcome(result: sa.CursorResult[Any]) -> Outcome:
    rows = list(result.all()) if result.returns_rows else []
    return Outcome(rows, result.rowcount)


class Runner(ABC):
    """Runs statements on one dialect's connections."""

    dialect: Dialect | None = None  # for SQL compiled once and run on the driver (store/batch.py); set by open

    @abstractmethod
    async def open(self) -> None:
        """Connect (PostgreSQL connects lazily, per pooled connection)."""

    @abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @abstractmethod
    async def execute(self, statement: Executable, params: dict[str, Any]) -> Outcome:
        """One autocommitted statement."""

    @abstractmethod
    async def call(self, fn: Callable[[Connection], T]) -> T:
        """`fn` with a sync connection, outside any transaction (for reads of several statements)."""

    @abstractmethod
    async def transaction(self, fn: Callable[[Connection], T]) -> T:
        """`fn` with a sync connection inside one transaction, committed when it returns."""

    def driver_transaction(self) -> AbstractAsyncContextManager[Any]:
        """The driver's own async connection inside one transaction (PostgreSQL's asyncpg); SQLite's driver is
        synchronous and has none."""
        raise NotImplementedError(f"{type(self).__name__} has no async driver connection")


class SqliteRunner(Runner):
    """One connection on one store-owned thread."""

    def __init__(self, target: StoreUrl) -> None:
        self._engine = create_sync_engine_for(target)
        self.dialect = self._engine.dialect
        self._thread: ThreadPoolExecutor | None = None
        self._conn: Connection | None = None

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise StoreError("the SQLite store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args))

    def _connection(self) -> Connection:
        if self._conn is None:
            raise StoreError("the SQLite store is not open")
        return self._conn

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflow-store-sqlite")
        self._conn = await self._on_thread(self._engine.connect)

    async def close(self) -> None:
        thread, conn = self._thread, self._conn
        if thread is None:
            return
        try:
            if conn is not None:
                await self._on_thread(conn.close)
            await self._on_thread(self._engine.dispose)
        finally:
            self._thread, self._conn = None, None
            # The thread is idle here (its last job just finished): joining it takes no time.
            thread.shutdown(wait=True)

    async def execute(self, statement: Executable, params: dict[str, Any]) -> Outcome:
        return await self._on_thread(self._execute, statement, params)

    def _execute(self, statement: Executable, params: dict[str, Any]) -> Outcome:
        return outcome(self._connection().execute(statement, params))

    async def call(self, fn: Callable[[Connection], T]) -> T:
        return await self._on_thread(lambda: fn(self._connection()))

    async def transaction(self, fn: Callable[[Connection], T]) -> T:
        return await self._on_thread(self._transaction, fn)

    def _transaction(self, fn: Callable[[Connection], T]) -> T:
        conn = self._connection()
        # IMMEDIATE takes the write lock at BEGIN: another process waits (busy_timeout) instead of reading a state
        # that is about to change and failing when it tries to write.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            value = fn(conn)
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
        return value


class PostgresRunner(Runner):
    """An asyncpg pool behind SQLAlchemy's async engine."""

    def __init__(self, target: StoreUrl) -> None:
        self._target = target
        self._engine: AsyncEngine | None = None

    def _pool(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the PostgreSQL store is not open")
        return self._engine

    async def open(self) -> None:
        try:
            self._engine = create_async_engine_for(self._target)
            self.dialect = self._engine.dialect
        except ImportError as exc:
            raise StoreError(
                f"store '{self._target.display}': PostgreSQL needs asyncpg: pip install 'workflow-engine[postgres]'"
            ) from exc

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def execute(self, statement: Executable, params: dict[str, Any]) -> Outcome:
        async with self._pool().connect() as conn:
            return outcome(await conn.execute(statement, params))

    async def call(self, fn: Callable[[Connection], T]) -> T:
        async with self._pool().connect() as conn:
            return await conn.run_sync(fn)

    async def transaction(self, fn: Callable[[Connection], T]) -> T:
        async with self._pool().connect() as conn:
            await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                return await conn.run_sync(fn)

    @asynccontextmanager
    async def driver_transaction(self) -> AsyncIterator[Any]:
        """A pooled connection's asyncpg connection inside a READ COMMITTED transaction, committed when the
        block ends (rolled back when it raises): for SQL compiled once and run on the driver (store/batch.py),
        without SQLAlchemy's per-statement execution path."""
        async with self._pool().connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None  # checked out: it is connected
            async with driver.transaction(isolation="read_committed"):
                yield driver


def runner_for(target: StoreUrl) -> Runner:
    """The runner of `target`'s dialect."""
    return SqliteRunner(target) if target.dialect == "sqlite" else PostgresRunner(target)
