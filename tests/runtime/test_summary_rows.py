"""`durable: false` summary rows: one row the store refuses does not take the rows written with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from workflow_engine.runtime import recorder as recorder_module
from workflow_engine.runtime.execution import Execution, ExecutionStatus
from workflow_engine.runtime.recorder import Recorder
from workflow_engine.store.factory import open_store_from_url
from workflow_engine.store.records import Status

URLS = ("sqlite:///{tmp}/s.db", "sqlite:///:memory:")  # through the helper process, and the store's thread


def _finished(execution_id: str, output: object) -> Execution:
    execution = Execution(execution_id, "w", {"body": "not kept"}, "http")
    execution.started_at = execution.created_at
    execution.settle(ExecutionStatus.SUCCESS, output)
    return execution


async def test_a_summary_row_has_what_ran_when_and_how_it_ended_but_not_the_input(tmp_path: Path) -> None:
    for url in URLS:
        store = open_store_from_url(url.format(tmp=tmp_path))
        await store.open()
        try:
            recorder = Recorder(store, "me", 30.0)
            execution = _finished("e1", {"n": 1})
            await recorder.finished(execution, durable=False)
            queued = recorder.unwritten("e1")  # what the API answers before the writer ran
            await recorder._write_summaries([])
            assert recorder.unwritten("e1") is None
            stored = await store.get_execution("e1")
        finally:
            await store.close()
        for record in (queued, stored):
            assert record is not None, url
            assert (record.workflow, record.trigger, record.status, record.output, record.input, record.durable) == (
                "w", "http", Status.SUCCESS, {"n": 1}, None, False), url
            assert record.created_at == record.started_at == execution.created_at
            assert record.finished_at is not None
            assert record.finished_at >= record.created_at
            assert record.owner is None


async def test_a_row_the_store_refuses_loses_only_itself(tmp_path: Path) -> None:
    for url in URLS:
        store = open_store_from_url(url.format(tmp=tmp_path))
        await store.open()
        try:
            recorder = Recorder(store, "me", 30.0)
            await recorder.finished(_finished("e0", {"n": 0}), durable=False)
            await recorder._write_summaries([])
            with capture_logs() as logs:
                # e2's output is not JSON data: refused at once. e0 again: refused by the table (same id), which
                # fails its batch; the batch is then written row by row.
                for execution_id, output in (("e1", {"n": 1}), ("e2", {"x": {1, 2}}), ("e0", {"n": 9}),
                                             ("e3", {"n": 3})):
                    await recorder.finished(_finished(execution_id, output), durable=False)
                await recorder._write_summaries([])
            kept = {r.id: r.output for r in (await store.list_executions(workflow="w")).items}
        finally:
            await store.close()
        assert kept == {"e0": {"n": 0}, "e1": {"n": 1}, "e3": {"n": 3}}, url
        assert sorted(e["execution_id"] for e in logs if e["event"] == "summary row not written") == ["e0", "e2"]


async def test_a_full_summary_buffer_holds_the_next_execution_until_the_writer_takes_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recorder_module, "SUMMARY_BUFFER", 3)
    store = open_store_from_url(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    try:
        recorder = Recorder(store, "me", 30.0)
        for n in range(3):
            await recorder.finished(_finished(f"e{n}", {"n": n}), durable=False)
        blocked = asyncio.create_task(recorder.finished(_finished("e3", {"n": 3}), durable=False))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        assert recorder.summaries_queued() == 3
        writer = asyncio.create_task(recorder.write_summaries())
        await asyncio.wait_for(blocked, 5)
        while recorder.summaries_queued() or recorder.unwritten("e3") is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        kept = {r.id for r in (await store.list_executions(workflow="w")).items}
    finally:
        await store.close()
    assert kept == {"e0", "e1", "e2", "e3"}


async def test_the_writer_stops_when_asked_even_if_a_write_swallowed_the_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store_from_url(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    writing = asyncio.Event()
    real = store.create_summaries

    async def swallowing(rows: Sequence[Any], steps: Sequence[Any] = ()) -> None:  # as Python 3.11's wait_for
        writing.set()                                                                # can, finishing the write
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        await real(rows, steps)

    monkeypatch.setattr(store, "create_summaries", swallowing)
    try:
        recorder = Recorder(store, "me", 30.0)
        writer = asyncio.create_task(recorder.write_summaries())
        await recorder.finished(_finished("e1", {"n": 1}), durable=False)
        await writing.wait()
        writer.cancel()
        done, _ = await asyncio.wait({writer}, timeout=5)
        assert done == {writer}, "the writer is still waiting after it was cancelled"
        assert writer.cancelled()
        assert await store.get_execution("e1") is not None
    finally:
        await store.close()


async def test_a_row_someone_waits_for_ends_the_writers_wait_for_more_rows(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer lets plain rows gather; a keyed row (a message's end, which its ack waits for) that comes
    meanwhile is written at once, with them, not when the gathering time is over."""
    monkeypatch.setattr(recorder_module, "SUMMARY_LINGER", 60.0)
    store = open_store_from_url(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    recorder = Recorder(store, "me", 30.0)
    writer = asyncio.create_task(recorder.write_summaries())
    try:
        await recorder.finished(_finished("plain", {"n": 0}), durable=False)
        await asyncio.sleep(0.2)  # the writer is gathering
        keyed = _finished("keyed", {"n": 1})
        keyed.idempotency_key, keyed.key_presumed_new = "bus:m1", True
        await recorder.finished(keyed, durable=False)
        assert keyed.end_written is not None
        await asyncio.wait_for(keyed.end_written, 10)
        assert {r.id for r in (await store.list_executions(workflow="w")).items} == {"plain", "keyed"}
        stored = await store.get_execution("keyed")
        assert stored is not None
        assert (stored.idempotency_key, stored.input) == ("bus:m1", {"body": "not kept"})
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await store.close()
