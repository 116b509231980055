"""Uploaded dynamic component sources, on SQLite and PostgreSQL: save (upsert), get, list, delete."""

from __future__ import annotations

from tests.store.conftest import StoreFactory


async def test_component_sources_round_trip(make_store: StoreFactory) -> None:
    store = await make_store()
    assert await store.get_component("pricing") is None
    await store.save_component("pricing", "def execute(ctx, input):\n    return {}\n", "d1")
    await store.save_component("tax", "x = 'ünïcode'\n", "d2")
    await store.save_component("pricing", "v2", "d3")  # an upload replaces the previous one
    saved = await store.get_component("pricing")
    assert saved is not None
    assert (saved.name, saved.source, saved.digest) == ("pricing", "v2", "d3")
    assert saved.updated_at > 0
    assert [(c.name, c.source) for c in await store.list_components()] == [("pricing", "v2"),
                                                                           ("tax", "x = 'ünïcode'\n")]
    assert await store.delete_component("pricing")
    assert not await store.delete_component("pricing")
    assert [c.name for c in await store.list_components()] == ["tax"]


async def test_another_replica_sees_an_upload(make_store: StoreFactory) -> None:
    first, second = await make_store(), await make_store()
    await first.save_component("pricing", "v1", "d1")
    other = await second.get_component("pricing")
    assert other is not None
    assert other.source == "v1"
