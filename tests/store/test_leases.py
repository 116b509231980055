"""Leases, parking and recovery: claim, claim_one, heartbeat, park, waiting_on — across replicas."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.store.conftest import StoreFactory
from workflow_engine.store.base import Store, StoreError
from workflow_engine.store.records import ExecutionRecord, Status

NOW = 1_000.0


def execution(execution_id: str, status: Status, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(
        id=execution_id, workflow="w", trigger="m", input={"id": execution_id}, status=status,
        created_at=1.0, updated_at=1.0, **fields,
    )


async def test_claim_takes_only_what_nobody_holds(store: Store) -> None:
    takeable = [
        execution("queued-free", Status.QUEUED),
        execution("queued-expired", Status.QUEUED, owner="dead", lease_expires_at=NOW - 1),
        execution("running-expired", Status.RUNNING, owner="dead", lease_expires_at=NOW - 0.001),
        execution("running-expires-now", Status.RUNNING, owner="dead", lease_expires_at=NOW),
        execution("parked-due", Status.PARKED, wake_at=NOW - 5),
    ]
    kept = [
        execution("running-held", Status.RUNNING, owner="alive", lease_expires_at=NOW + 10),
        execution("queued-held", Status.QUEUED, owner="alive", lease_expires_at=NOW + 10),
        execution("parked-later", Status.PARKED, wake_at=NOW + 60),
        execution("parked-event-only", Status.PARKED, wait_topic="t"),
        execution("success", Status.SUCCESS, owner="dead", lease_expires_at=NOW - 100, finished_at=2.0),
        execution("error", Status.ERROR, wake_at=NOW - 100, finished_at=2.0),
        execution("cancelled", Status.CANCELLED, finished_at=2.0),
    ]
    for record in takeable + kept:
        await store.create_execution(record)

    claimed = await store.claim("me", NOW + 30, NOW, limit=100)

    assert sorted(r.id for r in claimed) == sorted(r.id for r in takeable)
    for record in claimed:
        assert (record.status, record.owner, record.lease_expires_at) == (Status.RUNNING, "me", NOW + 30)
        assert record.input == {"id": record.id}
        assert await store.get_execution(record.id) == record
    for record in kept:
        assert await store.get_execution(record.id) == record
    assert await store.claim("other", NOW + 30, NOW, limit=100) == []


async def test_claim_respects_limit(store: Store) -> None:
    for i in range(5):
        await store.create_execution(execution(f"e{i}", Status.QUEUED))
    assert len(await store.claim("me", NOW + 30, NOW, limit=3)) == 3
    assert len(await store.claim("me", NOW + 30, NOW, limit=3)) == 2
    assert await store.claim("me", NOW + 30, NOW, limit=0) == []


async def test_concurrent_claimers_never_share_an_execution(make_store: StoreFactory) -> None:
    replicas = [await make_store(), await make_store()]
    ids = {f"e{i:03d}" for i in range(120)}
    for execution_id in ids:
        await replicas[0].create_execution(execution(execution_id, Status.QUEUED))

    async def claim(replica: int, attempt: int) -> list[str]:
        taken = await replicas[replica].claim(f"replica-{replica}-{attempt}", NOW + 30, NOW, limit=7)
        return [r.id for r in taken]

    batches = await asyncio.gather(*(claim(i % 2, i) for i in range(40)))
    claimed = [execution_id for batch in batches for execution_id in batch]
    assert len(claimed) == len(set(claimed)), "an execution was claimed twice"
    assert set(claimed) == ids
    for batch_index, batch in enumerate(batches):
        for execution_id in batch:
            record = await replicas[1].get_execution(execution_id)
            assert record is not None
            assert record.owner == f"replica-{batch_index % 2}-{batch_index}"


async def test_heartbeat_extends_only_the_owners_leases(store: Store) -> None:
    await store.create_execution(execution("a1", Status.RUNNING, owner="a", lease_expires_at=NOW))
    await store.create_execution(execution("a2", Status.RUNNING, owner="a", lease_expires_at=NOW - 5))
    await store.create_execution(execution("b1", Status.RUNNING, owner="b", lease_expires_at=NOW))

    assert await store.heartbeat("a", ["a1", "a2", "b1", "missing"], NOW + 30) == 2
    assert await store.heartbeat("a", [], NOW + 60) == 0

    leases = {}
    for execution_id in ("a1", "a2", "b1"):
        record = await store.get_execution(execution_id)
        assert record is not None
        leases[execution_id] = record.lease_expires_at
    assert leases == {"a1": NOW + 30, "a2": NOW + 30, "b1": NOW}


async def test_heartbeat_after_another_replica_took_over(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    await a.create_execution(execution("e1", Status.RUNNING, owner="a", lease_expires_at=NOW - 1))
    assert [r.id for r in await b.claim("b", NOW + 30, NOW, limit=10)] == ["e1"]
    assert await a.heartbeat("a", ["e1"], NOW + 60) == 0
    assert await b.heartbeat("b", ["e1"], NOW + 60) == 1


async def test_park_and_waiting_on(store: Store) -> None:
    await store.create_execution(execution("e1", Status.RUNNING, owner="me", lease_expires_at=NOW + 30))
    await store.create_execution(execution("e2", Status.RUNNING, owner="me", lease_expires_at=NOW + 30))
    await store.create_execution(execution("e3", Status.RUNNING, owner="me", lease_expires_at=NOW + 30))
    state = {"step": "wait", "match": "data.order == 'ä'", "timeout_at": NOW + 600}
    await store.park("e1", NOW + 600, "orders.paid", state)
    await store.park("e2", NOW + 60, None, None)
    await store.park("e3", None, "orders.shipped", {"step": "other"})

    waiting = await store.waiting_on("orders.paid")
    assert [r.id for r in waiting] == ["e1"]
    parked = waiting[0]
    assert (parked.status, parked.owner, parked.lease_expires_at) == (Status.PARKED, None, None)
    assert (parked.wake_at, parked.wait_topic, parked.wait_state) == (NOW + 600, "orders.paid", state)
    assert await store.waiting_on("nothing") == []
    # Only e2's timer is due at NOW + 60; e1 waits longer and e3 has no timer.
    assert [r.id for r in await store.claim("me", NOW + 90, NOW + 60, limit=10)] == ["e2"]
    with pytest.raises(StoreError) as info:
        await store.park("missing", None, "t", None)
    assert info.value.code == "execution_not_found"


async def test_waiting_on_ignores_woken_executions(store: Store) -> None:
    await store.create_execution(execution("e1", Status.RUNNING))
    await store.park("e1", None, "t", {"step": "wait"})
    assert await store.claim_one("e1", "me", NOW + 30, Status.PARKED)
    assert await store.waiting_on("t") == []


async def test_claim_one_only_when_status_matches(store: Store) -> None:
    await store.create_execution(execution("e1", Status.RUNNING))
    await store.park("e1", None, "t", None)

    assert not await store.claim_one("e1", "me", NOW + 30, Status.QUEUED)
    assert await store.claim_one("e1", "me", NOW + 30, Status.PARKED)
    record = await store.get_execution("e1")
    assert record is not None
    assert (record.status, record.owner, record.lease_expires_at) == (Status.RUNNING, "me", NOW + 30)
    assert not await store.claim_one("e1", "other", NOW + 30, Status.PARKED)
    assert not await store.claim_one("missing", "me", NOW + 30, Status.PARKED)


async def test_claim_one_has_one_winner_across_replicas(make_store: StoreFactory) -> None:
    replicas = [await make_store(), await make_store()]
    await replicas[0].create_execution(execution("e1", Status.RUNNING))
    await replicas[0].park("e1", None, "t", None)
    wins = await asyncio.gather(
        *(replicas[i % 2].claim_one("e1", f"r{i}", NOW + 30, Status.PARKED) for i in range(10))
    )
    assert sum(wins) == 1


async def test_release_owner_frees_only_that_owners_running_work(store: Store) -> None:
    await store.create_execution(execution("mine-running", Status.RUNNING, owner="me", lease_expires_at=NOW + 60))
    await store.create_execution(execution("mine-queued", Status.QUEUED, owner="me", lease_expires_at=NOW + 60))
    await store.create_execution(execution("theirs", Status.RUNNING, owner="other", lease_expires_at=NOW + 60))
    await store.create_execution(execution("mine-done", Status.SUCCESS, owner="me", lease_expires_at=NOW + 60))

    assert await store.release_owner("me") == 2
    assert await store.release_owner("me") == 0
    claimed = await store.claim("next", NOW + 30, NOW, limit=10)
    assert sorted(r.id for r in claimed) == ["mine-queued", "mine-running"]
