"""Store URLs: the forms accepted, how they map to drivers, and the errors for the rest."""

from __future__ import annotations

import pytest

from workflow_engine.store.base import StoreError
from workflow_engine.store.connect import parse_store_url
from workflow_engine.store.factory import open_store_from_url


@pytest.mark.parametrize(
    ("url", "driver", "database"),
    [
        ("sqlite:///./workflow.db", "sqlite+pysqlite", "./workflow.db"),
        ("sqlite:////var/lib/workflow/x.db", "sqlite+pysqlite", "/var/lib/workflow/x.db"),
        ("sqlite:///:memory:", "sqlite+pysqlite", ":memory:"),
        ("sqlite+aiosqlite:///w.db", "sqlite+pysqlite", "w.db"),
    ],
)
def test_sqlite_urls(url: str, driver: str, database: str) -> None:
    target = parse_store_url(url)
    assert (target.dialect, target.sa_url.drivername, target.sa_url.database) == ("sqlite", driver, database)
    assert target.display == f"sqlite:///{database}"


def test_postgresql_url_options() -> None:
    target = parse_store_url(
        "postgresql://app:secret@db.example:6432/orders?schema=tenant_1&pool_size=4&sslmode=require"
        "&application_name=workflow"
    )
    assert target.dialect == "postgresql"
    assert target.sa_url.drivername == "postgresql+asyncpg"
    assert (target.sa_url.host, target.sa_url.port, target.sa_url.database) == ("db.example", 6432, "orders")
    assert dict(target.sa_url.query) == {"ssl": "require"}
    assert (target.pg_schema, target.pool_size) == ("tenant_1", 4)
    assert dict(target.server_settings) == {"application_name": "workflow", "search_path": '"tenant_1"'}
    assert "secret" not in target.display
    assert parse_store_url("postgres://u@h/db").sa_url.drivername == "postgresql+asyncpg"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "scheme 'mysql' is not supported"),
        ("redis://localhost", "scheme 'redis' is not supported"),
        ("not a url", "is not a URL"),
        ("postgresql://u@h/db?schema=bad-name", "schema 'bad-name' must be a plain identifier"),
        ("postgresql://u@h/db?pool_size=0", "pool_size '0' must be a positive integer"),
        ("postgresql://u@h/db?schema=a&schema=b", "more than once"),
        ("sqlite:///w.db?mode=ro", "SQLite takes no query parameters"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store_from_url(url)


async def test_memory_store_works_without_a_file() -> None:
    store = open_store_from_url("sqlite:///:memory:")
    await store.open()
    try:
        assert await store.fire_tick("w", 1.0)
        assert await store.last_tick("w") == 1.0
    finally:
        await store.close()
