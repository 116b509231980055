"""`durable: false` summary rows: one row the store refuses does not take the rows written with it."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from workflow_engine.runtime.recorder import Recorder
from workflow_engine.store.factory import open_store_from_url
from workflow_engine.store.records import ExecutionRecord, Status


def _row(i: int, output: object) -> ExecutionRecord:
    return ExecutionRecord(id=f"e{i}", workflow="w", trigger="http", input=None, status=Status.SUCCESS,
                           output=output, created_at=1.0, updated_at=1.0, finished_at=2.0, durable=False)


async def test_a_row_the_store_refuses_loses_only_itself(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/s.db", "sqlite:///:memory:"):  # the helper process, and the thread
        store = open_store_from_url(url)
        await store.open()
        try:
            recorder = Recorder(store, "me", 30.0)
            with capture_logs() as logs:
                await recorder._write_summaries([_row(1, {"n": 1}), _row(2, {"x": {1, 2}}), _row(3, {"n": 3})])
            kept = {r.id: r.output for r in (await store.list_executions(workflow="w")).items}
        finally:
            await store.close()
        assert kept == {"e1": {"n": 1}, "e3": {"n": 3}}, url
        assert [e["execution_id"] for e in logs if e["event"] == "summary row not written"] == ["e2"]
