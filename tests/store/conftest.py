"""Store fixtures: every test that takes `store` (or `store_url`) runs on SQLite and on PostgreSQL.

PostgreSQL comes from `WORKFLOW_TEST_PG` (default: the local server, trust auth). Each test gets its own schema,
dropped afterwards. When the server is unreachable the PostgreSQL half is skipped, or fails under `CI`.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from workflow_engine.store.base import Store
from workflow_engine.store.factory import open_store_from_url

PG_URL = os.environ.get("WORKFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

StoreFactory = Callable[..., Awaitable[Store]]


_probed: dict[str, str | None] = {}


async def _pg_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it can (probed once per session)."""
    if PG_URL not in _probed:
        try:
            conn = await asyncpg.connect(PG_URL, timeout=5)
            await conn.close()
            _probed[PG_URL] = None
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            _probed[PG_URL] = (
                f"PostgreSQL at {PG_URL} is unreachable ({type(exc).__name__}: {exc}); set WORKFLOW_TEST_PG"
            )
    return _probed[PG_URL]


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _pg_dsn_and_schema(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", None)
    return urlunsplit(parts._replace(query=urlencode(query))), schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> AsyncIterator[str]:
    """A URL of an empty database of each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    problem = await _pg_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    schema = f"test_store_{uuid.uuid4().hex[:12]}"
    yield _with_schema(PG_URL, schema)
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def make_store(store_url: str) -> AsyncIterator[StoreFactory]:
    """Open another store on the same database (another replica); every one is closed after the test."""
    opened: list[Store] = []

    async def make(*, migrate: bool = True) -> Store:
        store = open_store_from_url(store_url)
        await store.open(migrate=migrate)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    """An open, migrated store."""
    return await make_store()


async def run_sql(url: str, sql: str) -> list[tuple[object, ...]]:
    """Run `sql` on the database behind `url` with its plain driver and return its rows (to look at or set up
    states the store API does not show or make)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(sql).fetchall()
            conn.commit()
        finally:
            conn.close()
        return rows
    dsn, schema = _pg_dsn_and_schema(url)
    settings = {"search_path": f'"{schema}"'} if schema else {}
    pg = await asyncpg.connect(dsn, server_settings=settings)
    try:
        return [tuple(row) for row in await pg.fetch(sql)]
    finally:
        await pg.close()
