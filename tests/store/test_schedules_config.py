"""Schedule ticks (exactly once across replicas) and config versions."""

from __future__ import annotations

import asyncio

from tests.store.conftest import StoreFactory
from workflow_engine.store.base import Store


async def test_fire_tick_once_per_workflow_and_tick(store: Store) -> None:
    assert await store.last_tick("w") is None
    assert await store.fire_tick("w", 60.0)
    assert not await store.fire_tick("w", 60.0)
    assert await store.fire_tick("w", 180.0)
    assert await store.fire_tick("w", 120.0)
    assert await store.fire_tick("other", 60.0)
    assert await store.last_tick("w") == 180.0
    assert await store.last_tick("other") == 60.0


async def test_fire_tick_exactly_once_under_concurrency(make_store: StoreFactory) -> None:
    replicas = [await make_store(), await make_store()]
    for tick in (1_700_000_000.0, 1_700_000_060):
        fired = await asyncio.gather(*(replicas[i % 2].fire_tick("cron", tick) for i in range(20)))
        assert sum(fired) == 1
    assert await replicas[0].last_tick("cron") == 1_700_000_060.0


async def test_save_config_versions_by_digest(store: Store) -> None:
    first = await store.save_config("version: 1\nname: a\n", "digest-a")
    assert await store.save_config("version: 1\nname: a\n", "digest-a") == first
    second = await store.save_config("version: 1\nname: b # ü\n", "digest-b")
    assert second > first
    assert await store.get_config(first) == "version: 1\nname: a\n"
    assert await store.get_config(second) == "version: 1\nname: b # ü\n"
    assert await store.get_config(second + 100) is None


async def test_save_config_same_digest_concurrently(make_store: StoreFactory) -> None:
    replicas = [await make_store(), await make_store()]
    versions = await asyncio.gather(*(replicas[i % 2].save_config("text", "same") for i in range(10)))
    assert len(set(versions)) == 1
