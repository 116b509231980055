"""Migrations: empty → latest, re-open, refusal of a newer or (unmigrated) older schema, concurrent replicas."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.store.conftest import StoreFactory, run_sql
from workflow_engine.store.base import SchemaTooNewError, StoreError
from workflow_engine.store.migrations import LATEST, MIGRATIONS
from workflow_engine.store.records import ExecutionRecord
from workflow_engine.store.schema import EXECUTION_FIELDS


def test_migrations_are_numbered_one_by_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


def test_executions_table_has_every_record_field() -> None:
    assert {f.name for f in dataclasses.fields(ExecutionRecord)} == EXECUTION_FIELDS


async def test_empty_database_migrates_to_latest(make_store: StoreFactory) -> None:
    store = await make_store()
    assert await store.schema_version() == LATEST
    created, _ = await store.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input={}))
    assert await store.get_execution("e1") == created


async def test_unmigrated_empty_database_is_refused(make_store: StoreFactory) -> None:
    with pytest.raises(StoreError) as info:
        await make_store(migrate=False)
    assert info.value.code == "schema_too_old"


async def test_reopen_is_idempotent_and_keeps_data(make_store: StoreFactory) -> None:
    first = await make_store()
    await first.create_execution(ExecutionRecord(id="e1", workflow="w", trigger="manual", input=[1]))
    await first.close()
    second = await make_store()
    assert await second.schema_version() == LATEST
    assert await second.migrate() == LATEST
    third = await make_store(migrate=False)
    record = await third.get_execution("e1")
    assert record is not None
    assert record.input == [1]


async def test_newer_schema_is_refused(store_url: str, make_store: StoreFactory) -> None:
    store = await make_store()
    await store.close()
    await run_sql(store_url, f"INSERT INTO workflow_schema_version (version, applied_at) VALUES ({LATEST + 1}, 0)")
    for migrate in (True, False):
        with pytest.raises(SchemaTooNewError, match=f"schema version {LATEST + 1} is newer"):
            await make_store(migrate=migrate)


async def test_replicas_starting_together_migrate_once(store_url: str, make_store: StoreFactory) -> None:
    stores = await asyncio.gather(*(make_store() for _ in range(4)))
    versions = await asyncio.gather(*(s.schema_version() for s in stores))
    assert versions == [LATEST] * 4
    applied = await run_sql(store_url, "SELECT version FROM workflow_schema_version ORDER BY version")
    assert [row[0] for row in applied] == list(range(1, LATEST + 1))
