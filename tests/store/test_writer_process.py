"""The summary-row helper process of SQLite file stores (store/writer_process.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog.testing

from workflow_engine.store.base import StoreError
from workflow_engine.store.connect import parse_store_url
from workflow_engine.store.records import ExecutionRecord, Status
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
    writer = store.summary_writer
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
    assert store.summary_writer is not None
    assert store.summary_writer.started == 1  # a refusal is not a crash


async def test_memory_databases_and_postgresql_write_summary_rows_themselves() -> None:
    memory = SqlStore(parse_store_url("sqlite:///:memory:"))
    assert memory.summary_writer is None
    await memory.open()
    try:
        await memory.create_executions(summaries("m", 3))
        assert await listed_ids(memory) == ["m0", "m1", "m2"]
    finally:
        await memory.close()
    assert SqlStore(parse_store_url("postgresql://postgres@127.0.0.1:5432/test")).summary_writer is None


async def test_a_store_told_not_to_use_the_process_writes_on_its_thread(tmp_path: Path) -> None:
    store = SqlStore(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"), summary_process=False)
    assert store.summary_writer is None
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
    fallbacks = [e for e in logs if e["event"].startswith("summary writer process unavailable")]
    assert [(e["rows"], "database is locked" in e["error"]) for e in fallbacks] == [(3, True)]
    assert await listed_ids(store) == ["a0", "b0", "b1", "b2"]
    assert store.summary_writer is not None
    assert store.summary_writer.started == 1  # locked out is not dead: the same child takes the next batch
    await store.create_executions(summaries("c", 1))
    assert store.summary_writer.started == 1
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
    assert store.summary_writer is None  # the thread writes from now on
    assert writer.disabled is not None
    assert "could not start" in writer.disabled
    turned_off = [e for e in logs if e["event"].startswith("summary writer process turned off")]
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
    assert store.summary_writer is None
    assert writer.disabled == "summary writer process started 2 times"
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


async def test_without_a_failed_child_the_store_thread_still_refuses_duplicate_rows(tmp_path: Path) -> None:
    store = SqlStore(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"), summary_process=False)
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
