"""The summary-row helper process of SQLite file stores (store/writer_process.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from workflow_engine.store.base import StoreError
from workflow_engine.store.connect import parse_store_url
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord
from workflow_engine.store.sql import SqlStore
from workflow_engine.store.writer_process import WriterProcess


def summaries(prefix: str, count: int) -> list[ExecutionRecord]:
    return [ExecutionRecord(id=f"{prefix}{n}", workflow="fast", trigger="http", input=None, status=Status.SUCCESS,
                            output={"n": n}, error=None, finished_at=1700000000.0 + n, created_at=1700000000.0,
                            updated_at=1700000000.0, durable=False)
            for n in range(count)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    """An open store on a SQLite file (`s.db`), closed after the test (closing twice is fine)."""
    opened = SqlStore(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def writer_of(store: SqlStore) -> WriterProcess:
    writer = store.writer_process
    assert writer is not None
    return writer


async def listed_ids(store: SqlStore) -> list[str]:
    return sorted(r.id for r in (await store.list_executions(workflow="fast", limit=500)).items)


async def test_summary_rows_of_a_sqlite_file_go_through_one_child_process(store: SqlStore) -> None:
    writer = writer_of(store)
    assert writer.pid is None  # started by the first batch, not by open()
    await store.create_executions(summaries("a", 40))
    pid = writer.pid
    assert pid is not None
    assert pid != os.getpid()
    await store.create_executions(summaries("b", 3))
    assert writer.pid == pid  # the same child for every batch
    assert writer.started == 1
    ids = await listed_ids(store)
    assert ids == sorted([f"a{n}" for n in range(40)] + [f"b{n}" for n in range(3)])
    row = await store.get_execution("a7")
    assert row is not None
    assert (row.status, row.output, row.durable, row.finished_at) == (Status.SUCCESS, {"n": 7}, False,
                                                                       1700000007.0)
    await store.close()
    assert writer.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended at close (and reaped)


async def test_a_killed_child_loses_no_row_and_the_next_batch_starts_a_new_one(store: SqlStore) -> None:
    writer = writer_of(store)
    await store.create_executions(summaries("a", 5))
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await store.create_executions(summaries("b", 5))  # the store's thread writes it
    assert len(await listed_ids(store)) == 10
    await store.create_executions(summaries("c", 5))
    assert writer.started == 2
    assert writer.pid not in (None, pid)
    assert len(await listed_ids(store)) == 15


async def test_rows_the_child_refuses_fail_the_batch_and_leave_nothing_half_written(store: SqlStore) -> None:
    await store.create_executions(summaries("a", 2))
    clash = summaries("z", 3) + summaries("a", 1)  # a0 exists: the primary key refuses the batch
    with pytest.raises(StoreError, match=r"create_executions failed.*UNIQUE constraint failed"):
        await store.create_executions(clash)
    assert await listed_ids(store) == ["a0", "a1"]  # rolled back: no z rows either
    assert store.writer_process is not None
    assert store.writer_process.started == 1  # a refusal is not a crash


async def test_memory_databases_and_postgresql_write_summary_rows_themselves() -> None:
    memory = SqlStore(parse_store_url("sqlite:///:memory:"))
    assert memory.writer_process is None
    await memory.open()
    try:
        await memory.create_executions(summaries("m", 3))
        assert await listed_ids(memory) == ["m0", "m1", "m2"]
    finally:
        await memory.close()
    assert SqlStore(parse_store_url("postgresql://postgres@127.0.0.1:5432/test")).writer_process is None


async def test_a_store_told_not_to_use_the_process_writes_on_its_thread(tmp_path: Path) -> None:
    store = SqlStore(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"), helper_process=False)
    assert store.writer_process is None
    await store.open()
    try:
        await store.create_executions(summaries("t", 4))
        assert len(await listed_ids(store)) == 4
    finally:
        await store.close()


async def test_a_batch_locked_out_of_the_child_is_written_by_the_store_thread(store: SqlStore, tmp_path: Path) -> None:
    await store.create_executions(summaries("a", 1))
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than the child waits (1 s)
    with structlog.testing.capture_logs() as logs:
        write = asyncio.create_task(store.create_executions(summaries("b", 3)))
        await asyncio.sleep(1.5)
        assert not write.done()
        other.execute("COMMIT")
        other.close()
        await write
    fallbacks = [e for e in logs if e["event"].startswith("store writer process unavailable")]
    assert [(e["batch"], "database is locked" in e["error"]) for e in fallbacks] == [(3, True)]
    assert await listed_ids(store) == ["a0", "b0", "b1", "b2"]
    assert store.writer_process is not None
    assert store.writer_process.started == 1  # locked out is not dead: the same child takes the next batch
    await store.create_executions(summaries("c", 1))
    assert store.writer_process.started == 1
    assert len(await listed_ids(store)) == 5


async def test_a_child_that_stops_answering_is_killed_and_its_batch_written_by_the_thread(store: SqlStore) -> None:
    writer = writer_of(store)
    await store.create_executions(summaries("a", 2))
    pid = writer.pid
    assert pid is not None
    writer.answer_timeout = 0.5
    os.kill(pid, signal.SIGSTOP)  # alive but silent
    await store.create_executions(summaries("b", 2))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert await listed_ids(store) == ["a0", "a1", "b0", "b1"]
    await store.create_executions(summaries("c", 1))
    assert writer.started == 2


async def test_a_child_that_cannot_start_turns_the_process_off_once(store: SqlStore, tmp_path: Path) -> None:
    writer = writer_of(store)
    writer.python = str(tmp_path / "no-such-python")
    with structlog.testing.capture_logs() as logs:
        await store.create_executions(summaries("a", 2))
        await store.create_executions(summaries("b", 2))
    assert store.writer_process is None  # the thread writes from now on
    assert writer.disabled is not None
    assert "could not start" in writer.disabled
    turned_off = [e for e in logs if e["event"].startswith("store writer process turned off")]
    assert len(turned_off) == 1
    assert turned_off[0]["log_level"] == "error"
    assert await listed_ids(store) == ["a0", "a1", "b0", "b1"]


async def test_a_child_that_keeps_dying_is_given_up_after_max_children(store: SqlStore) -> None:
    writer = writer_of(store)
    writer.max_children = 2
    for batch in "abc":
        await store.create_executions(summaries(batch, 1))
        if writer.pid is not None:
            os.kill(writer.pid, signal.SIGKILL)
    for batch in "de":  # the killed child is found dead by the first, the third start refused by one of them
        await store.create_executions(summaries(batch, 1))
    assert writer.started == 2
    assert store.writer_process is None
    assert writer.disabled == "store writer process started 2 times"
    assert await listed_ids(store) == ["a0", "b0", "c0", "d0", "e0"]


async def test_the_fallback_skips_rows_a_failed_child_committed_before_it_died(store: SqlStore, tmp_path: Path) -> None:
    writer = writer_of(store)
    await store.create_executions(summaries("a", 1))
    pid = writer.pid
    assert pid is not None
    # As if the child had committed b0 and b1, then died before it answered.
    batch = summaries("b", 3)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    for row_id in ("b0", "b1"):
        other.execute("INSERT INTO executions (id, workflow, trigger, status, attempt, created_at, updated_at, "
                      "durable) SELECT ?, workflow, trigger, status, attempt, created_at, updated_at, durable "
                      "FROM executions WHERE id = 'a0'", (row_id,))
    other.close()
    os.kill(pid, signal.SIGKILL)
    await store.create_executions(batch)  # through the store's thread: b0, b1 skipped, b2 inserted
    assert await listed_ids(store) == ["a0", "b0", "b1", "b2"]
    b2 = await store.get_execution("b2")
    assert b2 is not None
    assert b2.output == {"n": 2}


async def test_the_fallback_skips_the_checkpoints_a_failed_child_committed_with_their_rows(
        store: SqlStore, tmp_path: Path) -> None:
    """Durable rows written whole at their end carry checkpoints: after a child committed one such row and
    died, the store thread's run of the batch skips that row and its checkpoints and writes the others."""
    writer = writer_of(store)

    def row(execution_id: str) -> Any:
        return store.summary_row(
            execution_id, workflow="fast", trigger="message", status=Status.SUCCESS, config_version=None,
            output={"id": execution_id}, error=None, attempt=1, created_at=1.0, started_at=1.0, finished_at=2.0,
            updated_at=2.0, lease_expires_at=None, parent_id=None, input={}, idempotency_key=f"bus:{execution_id}",
            durable=True)

    def step(execution_id: str, key: str) -> Any:
        return store.step_row(StepRecord(execution_id, key, "success", output=key, started_at=1.0, finished_at=2.0))

    await store.create_summaries([row("a0")], [step("a0", "x")])
    pid = writer.pid
    assert pid is not None
    # As if the child had committed b0 with its checkpoints, then died before it answered.
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("INSERT INTO executions SELECT 'b0', workflow, trigger, input, status, config_version, output, "
                  "error, attempt, created_at, started_at, finished_at, updated_at, owner, lease_expires_at, "
                  "'bus:b0', parent_id, wake_at, wait_topic, wait_state, durable FROM executions WHERE id = 'a0'")
    other.execute("INSERT INTO steps SELECT 'b0', step_key, attempt, status, output, error, started_at, "
                  "finished_at, extra FROM steps WHERE execution_id = 'a0'")
    other.close()
    os.kill(pid, signal.SIGKILL)
    taken = await store.create_summaries([row("b0"), row("b1")], [step("b0", "x"), step("b1", "x"), step("b1", "y")])
    assert taken == set()
    assert await listed_ids(store) == ["a0", "b0", "b1"]
    assert [(s.step_key, s.output) for s in await store.load_steps("b0")] == [("x", "x")]
    assert [(s.step_key, s.output) for s in await store.load_steps("b1")] == [("x", "x"), ("y", "y")]


async def test_without_a_failed_child_the_store_thread_still_refuses_duplicate_rows(tmp_path: Path) -> None:
    store = SqlStore(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"), helper_process=False)
    await store.open()
    try:
        await store.create_executions(summaries("a", 1))
        with pytest.raises(StoreError, match="UNIQUE constraint failed"):
            await store.create_executions(summaries("a", 1))
    finally:
        await store.close()


async def test_a_batch_whose_caller_was_cancelled_is_still_committed_by_the_same_child(store: SqlStore) -> None:
    writer = writer_of(store)
    await store.create_executions(summaries("a", 1))  # the child runs
    pid = writer.pid
    cancelled = asyncio.create_task(store.create_executions(summaries("b", 200)))
    await asyncio.sleep(0)  # it has sent the batch and waits for the answer
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await store.create_executions(summaries("c", 1))  # skips the answer meant for the cancelled caller
    assert writer.pid == pid  # the same child took c: the stale answer was no reason to kill it
    assert writer.started == 1
    ids = await listed_ids(store)
    assert len(ids) == 202
    assert {"a0", "b0", "b199", "c0"} <= set(ids)


# -- the hot-path writes of durable executions (group commit batches) ---------------------------------------


def _durable(execution_id: str, key: str | None = None, created_at: float = 1700000000.0) -> ExecutionRecord:
    return ExecutionRecord(id=execution_id, workflow="slow", trigger="message", input={"id": execution_id},
                           status=Status.RUNNING, owner="me", created_at=created_at, updated_at=created_at,
                           idempotency_key=key)


def _thread_transactions(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Transactions run on the store's own thread from now on (a list that grows with each)."""
    runner = store._runner
    assert runner is not None
    calls: list[object] = []
    real = runner.transaction

    async def counted(fn: Any) -> Any:
        calls.append(fn)
        return await real(fn)

    monkeypatch.setattr(runner, "transaction", counted)
    return calls


async def test_hot_path_writes_of_a_sqlite_file_go_through_the_child(store: SqlStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Row before, checkpoints, park, update and end of concurrent executions are committed by the child
    (not one transaction on the store's thread), do everything their statements say, and a write a constraint
    refuses fails only its caller."""
    thread = _thread_transactions(store, monkeypatch)
    created = await asyncio.gather(store.create_execution(_durable("d1", key="k1")),
                                   store.create_execution(_durable("d2")),
                                   store.create_execution(_durable("d3", key="k3")))
    assert [flag for _, flag in created] == [True, True, True]
    again, flag = await store.create_execution(_durable("d9", key="k1"))  # the key is taken: d1 is returned
    assert (again.id, flag) == ("d1", False)
    writer = writer_of(store)
    assert writer.pid is not None
    results = await asyncio.gather(
        store.save_step(StepRecord("d1", "one", "success", output={"x": 1}, started_at=1.0, finished_at=2.0)),
        store.save_step(StepRecord("nobody", "one", "success", output=1)),  # no such execution: FOREIGN KEY
        store.update_execution("d2", attempt=2),
        store.park("d3", 99.0, "orders.paid", {"step": "wait"}),
        store.finish_execution("d1", Status.SUCCESS, {"ok": True}, None, 3.0,
                               steps=[StepRecord("d1", "two", "success", output=2)]),
        return_exceptions=True)
    assert isinstance(results[1], StoreError)
    assert "save_step failed" in str(results[1])
    assert "FOREIGN KEY constraint failed" in str(results[1])
    assert [r for i, r in enumerate(results) if i != 1] == [None] * 4
    with pytest.raises(StoreError, match="update_execution: execution 'nobody' does not exist"):
        await store.update_execution("nobody", attempt=2)
    assert thread == []  # nothing went the thread's way
    assert writer.started == 1
    done = await store.get_execution("d1")
    assert done is not None
    assert (done.status, done.output, done.owner, done.lease_expires_at) == (Status.SUCCESS, {"ok": True}, None, None)
    assert [(s.step_key, s.output) for s in await store.load_steps("d1")] == [("one", {"x": 1}), ("two", 2)]
    updated = await store.get_execution("d2")
    assert updated is not None
    assert (updated.attempt, updated.input) == (2, {"id": "d2"})
    parked = await store.get_execution("d3")
    assert parked is not None
    assert (parked.status, parked.owner, parked.wake_at, parked.wait_state) == (Status.PARKED, None, 99.0,
                                                                               {"step": "wait"})


async def test_writes_the_child_had_when_it_failed_are_run_again_on_the_thread_and_find_their_own_rows(
        store: SqlStore, tmp_path: Path) -> None:
    """A child that stops answering is killed and its batch run on the store's thread. Rows it may have
    committed first are not a conflict for the insert that made them (same id, workflow and creation time),
    with or without a key; another record with a taken id still is."""
    writer = writer_of(store)
    await store.create_execution(_durable("warm"))
    pid = writer.pid
    assert pid is not None
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    for execution_id, key in (("p1", None), ("p2", "k2"), ("p3", None)):  # as if the child had committed them
        other.execute("INSERT INTO executions (id, workflow, trigger, status, attempt, created_at, updated_at, "
                      "idempotency_key, durable) VALUES (?, 'slow', 'message', 'running', 1, 1700000000.0, "
                      "1700000000.0, ?, 1)", (execution_id, key))
    other.close()
    writer.answer_timeout = 0.5
    os.kill(pid, signal.SIGSTOP)  # alive but silent: the batch was sent, its outcome is unknown
    with structlog.testing.capture_logs() as logs:
        results = await asyncio.gather(store.create_execution(_durable("p1")),
                                       store.create_execution(_durable("p2", key="k2")),
                                       store.create_execution(_durable("p3", created_at=1800000000.0)),
                                       return_exceptions=True)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "store writer process unavailable; the store's thread writes the batch"]
    assert results[0] == (_durable("p1"), True)
    assert results[1] == (_durable("p2", key="k2"), True)
    assert isinstance(results[2], StoreError)  # not its row: a real conflict
    assert "UNIQUE constraint failed" in str(results[2])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    await store.create_execution(_durable("p4"))  # a new child
    assert writer.started == 2


async def test_a_constraint_is_an_error_when_no_child_failed(store: SqlStore) -> None:
    """The same row inserted twice through a healthy child: the second insert is refused, never taken for
    its own."""
    await store.create_execution(_durable("x1"))
    with pytest.raises(StoreError, match=r"create_execution failed.*UNIQUE constraint failed: executions.id"):
        await store.create_execution(_durable("x1"))
