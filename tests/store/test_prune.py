"""Retention: prune deletes old finished executions with their steps, in batches, and superseded ticks."""

from __future__ import annotations

from workflow_engine.store.base import Store
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord

CUTOFF = 5_000.0


async def add(store: Store, execution_id: str, status: Status, finished_at: float | None) -> None:
    await store.create_execution(
        ExecutionRecord(id=execution_id, workflow="w", trigger="m", input={}, status=status, created_at=1.0)
    )
    await store.save_step(StepRecord(execution_id, "a", "success", output=1))
    await store.save_step(StepRecord(execution_id, "b", "success", output=2))
    if finished_at is not None:
        await store.finish_execution(execution_id, status, None, None, finished_at)


async def test_prune_deletes_only_old_finished_in_batches(store: Store) -> None:
    old = {"old-success": Status.SUCCESS, "old-error": Status.ERROR, "old-cancelled": Status.CANCELLED}
    for execution_id, status in old.items():
        await add(store, execution_id, status, CUTOFF - 100)
    await add(store, "recent-success", Status.SUCCESS, CUTOFF + 1)
    await add(store, "at-cutoff", Status.SUCCESS, CUTOFF)
    await add(store, "old-running", Status.RUNNING, None)
    await add(store, "old-queued", Status.QUEUED, None)
    await add(store, "old-parked", Status.PARKED, None)

    assert await store.prune(CUTOFF, batch=2) == 2
    assert await store.prune(CUTOFF, batch=2) == 1
    assert await store.prune(CUTOFF, batch=2) == 0

    for execution_id in old:
        assert await store.get_execution(execution_id) is None
        assert await store.load_steps(execution_id) == []
    for execution_id in ("recent-success", "at-cutoff", "old-running", "old-queued", "old-parked"):
        assert await store.get_execution(execution_id) is not None
        assert [s.step_key for s in await store.load_steps(execution_id)] == ["a", "b"]


async def test_prune_keeps_each_workflows_latest_tick(store: Store) -> None:
    for tick in (100.0, 200.0, 300.0):
        assert await store.fire_tick("a", tick)
    assert await store.fire_tick("b", 50.0)
    assert await store.fire_tick("c", CUTOFF + 10)

    assert await store.prune(CUTOFF, batch=1) == 1
    assert await store.prune(CUTOFF, batch=10) == 1
    assert await store.prune(CUTOFF, batch=10) == 0
    assert (await store.last_tick("a"), await store.last_tick("b"), await store.last_tick("c")) == (
        300.0, 50.0, CUTOFF + 10
    )
    # The pruned ticks are gone, so they could fire again: only the latest guards against a repeat.
    assert not await store.fire_tick("a", 300.0)
    assert await store.fire_tick("a", 200.0)
