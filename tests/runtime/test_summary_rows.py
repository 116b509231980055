"""`durable: false` summary rows: one row the store refuses does not take the rows written with it."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

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
            assert record.finished_at is not None and record.finished_at >= record.created_at
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
