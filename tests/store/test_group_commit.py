"""Group commit: concurrent hot-path writes share transactions; each caller still sees only its own outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from workflow_engine.store.base import Store, StoreError
from workflow_engine.store.connect import parse_store_url
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord
from workflow_engine.store.sql import SqlStore


def _record(i: int, key: str | None = None) -> ExecutionRecord:
    return ExecutionRecord(id=f"e{i:04d}", workflow="w", trigger="message", input={"i": i}, idempotency_key=key)


def _batches(store: Store) -> int:
    assert isinstance(store, SqlStore)
    assert store._group is not None
    return store._group.batches


async def test_concurrent_writes_share_transactions_and_all_land(store: Store) -> None:
    before = _batches(store)
    results = await asyncio.gather(*(store.create_execution(_record(i, key=f"m{i}")) for i in range(200)))
    assert all(created for _, created in results)
    assert _batches(store) - before < 100  # committed in shared transactions, not one each
    await asyncio.gather(*(store.finish_execution(f"e{i:04d}", Status.SUCCESS, i, None, 1.0) for i in range(200)))
    for i in (0, 99, 199):
        record = await store.get_execution(f"e{i:04d}")
        assert record is not None
        assert record.status is Status.SUCCESS
        assert record.output == i


async def test_duplicate_idempotency_keys_in_one_batch_start_one_execution(store: Store) -> None:
    results = await asyncio.gather(*(store.create_execution(_record(i, key="same")) for i in range(20)))
    created = [record.id for record, new in results if new]
    assert len(created) == 1
    assert {record.id for record, _ in results} == set(created)  # the others get the first one back


async def test_a_failing_write_fails_only_its_caller(store: Store) -> None:
    await store.create_execution(_record(1))
    # e0001 again (primary key taken) among good writes: only that caller gets the error.
    writes = [store.create_execution(_record(i)) for i in (2, 3, 1, 4, 5)]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[2], StoreError)
    assert "create_execution" in str(results[2])
    assert [(r[0].id, r[1]) for i, r in enumerate(results) if i != 2 and isinstance(r, tuple)] == [
        (f"e{i:04d}", True) for i in (2, 3, 4, 5)]
    for i in (2, 3, 4, 5):
        assert await store.get_execution(f"e{i:04d}") is not None


async def test_unknown_execution_is_reported_inside_a_batch(store: Store) -> None:
    await store.create_execution(_record(1))
    results = await asyncio.gather(
        store.finish_execution("e0001", Status.SUCCESS, None, None, 1.0),
        store.finish_execution("nope", Status.SUCCESS, None, None, 1.0), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], StoreError)
    assert results[1].code == "execution_not_found"


async def test_a_write_whose_caller_was_cancelled_is_committed(store: Store) -> None:
    first = asyncio.create_task(store.create_execution(_record(1)))
    second = asyncio.create_task(store.create_execution(_record(2)))
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    await first
    await store.close()  # waits for the writes under way
    assert isinstance(store, SqlStore)
    await store.open()
    assert await store.get_execution("e0002") is not None


async def test_sqlite_batches_run_every_hot_path_write_on_the_driver(tmp_path: Path) -> None:
    """SQLAlchemy's execution path cost more than the statements; each hot-path write must skip it, and the
    SQL run that way must still do everything the statement says (the end clears owner, lease and wait)."""
    store = SqlStore(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"))
    await store.open()
    try:
        await _hot_path_writes(store)
    finally:
        await store.close()


async def _hot_path_writes(store: SqlStore) -> None:
    await asyncio.gather(*(store.create_execution(_record(i, key=f"k{i}")) for i in range(4)))
    claimed = await store.claim("me", lease_until=1e12, now=1.0, limit=4)
    assert {r.owner for r in claimed} == {"me"}
    await asyncio.gather(
        store.save_step(StepRecord("e0000", "one", "success", output={"x": 1}, started_at=1.0, finished_at=2.0)),
        store.update_execution("e0001", started_at=1.0),
        store.park("e0002", 99.0, "orders.paid", {"step": "wait"}),
        store.finish_execution("e0003", Status.SUCCESS, {"ok": True}, None, 3.0),
    )
    assert store._group is not None
    compiled = store._group._compiled
    assert len(compiled) >= 5  # the idempotent insert and the four writes above
    assert [str(statement) for (statement, _), sql in compiled.items() if sql is None] == []
    done = await store.get_execution("e0003")
    assert done is not None
    assert (done.status, done.output, done.owner, done.lease_expires_at) == (Status.SUCCESS, {"ok": True}, None, None)
    parked = await store.get_execution("e0002")
    assert parked is not None
    assert (parked.status, parked.owner, parked.wake_at, parked.wait_topic) == (Status.PARKED, None, 99.0,
                                                                               "orders.paid")
    assert [s.output for s in await store.load_steps("e0000")] == [{"x": 1}]


async def test_statements_written_together_commit_together_or_not_at_all(store: Store) -> None:
    await asyncio.gather(store.create_execution(_record(1)), store.create_execution(_record(2)))
    good = StepRecord("e0001", "a", "success", output=1)
    bad = StepRecord("e0001", "b", None)  # type: ignore[arg-type]  # NOT NULL: the database refuses it
    # In a shared batch with another caller's write, and on its own: the good step goes with the bad one.
    results = await asyncio.gather(store.save_steps([good, bad]), store.update_execution("e0002", attempt=2),
                                   return_exceptions=True)
    assert isinstance(results[0], StoreError)
    assert results[1] is None
    with pytest.raises(StoreError):
        await store.finish_execution("e0001", Status.SUCCESS, 1, None, 2.0, steps=[good, bad])
    assert await store.load_steps("e0001") == []
    record = await store.get_execution("e0001")
    assert record is not None
    assert record.status is not Status.SUCCESS
    other = await store.get_execution("e0002")
    assert other is not None
    assert other.attempt == 2

    await store.finish_execution("e0001", Status.SUCCESS, 1, None, 2.0, steps=[good])
    assert [(s.step_key, s.output) for s in await store.load_steps("e0001")] == [("a", 1)]
    record = await store.get_execution("e0001")
    assert record is not None
    assert record.status is Status.SUCCESS


async def test_hot_path_batches_skip_sqlalchemys_execution_path(store: Store,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Both dialects: concurrent hot-path writes run as driver SQL (SQLite: the writer process; PostgreSQL:
    asyncpg itself), never through SQLAlchemy's statement or transaction path, and still do everything their
    statements say; a write the database refuses fails only its caller, with an error naming the operation."""
    assert isinstance(store, SqlStore)
    runner = store._runner
    assert runner is not None
    through_sqlalchemy: list[str] = []
    for name in ("transaction", "execute"):
        real = getattr(runner, name)

        async def counted(*args: object, _real: Any = real, _name: str = name) -> object:
            through_sqlalchemy.append(_name)
            return await _real(*args)

        monkeypatch.setattr(runner, name, counted)
    created = await asyncio.gather(*(store.create_execution(_record(i, key=f"k{i}")) for i in range(4)))
    assert [flag for _, flag in created] == [True] * 4
    await asyncio.gather(
        store.save_step(StepRecord("e0000", "one", "success", output={"x": 1}, started_at=1.0, finished_at=2.0)),
        store.update_execution("e0001", attempt=2),
        store.park("e0002", 99.0, "orders.paid", {"step": "wait"}),
        store.finish_execution("e0003", Status.SUCCESS, {"ok": True}, None, 3.0,
                               steps=[StepRecord("e0003", "last", "success", output=3)]),
    )
    assert through_sqlalchemy == []
    results = await asyncio.gather(
        store.update_execution("e0001", attempt=3),
        store.save_step(StepRecord("missing", "one", "success", output=1)),  # no such execution
        return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], StoreError)
    assert "save_step" in str(results[1])
    assert "foreign key" in str(results[1]).lower()
    with pytest.raises(StoreError, match="does not exist"):
        await store.finish_execution("missing", Status.SUCCESS, None, None, 1.0)
    duplicate, flag = await store.create_execution(_record(9, key="k0"))
    assert (duplicate.id, flag) == ("e0000", False)
    assert [s.output for s in await store.load_steps("e0000")] == [{"x": 1}]
    done = await store.get_execution("e0003")
    assert done is not None
    assert (done.status, done.output, done.owner) == (Status.SUCCESS, {"ok": True}, None)
    assert [s.output for s in await store.load_steps("e0003")] == [3]
    updated = await store.get_execution("e0001")
    assert updated is not None
    assert updated.attempt == 3
    parked = await store.get_execution("e0002")
    assert parked is not None
    assert (parked.status, parked.wake_at, parked.wait_state) == (Status.PARKED, 99.0, {"step": "wait"})
