"""Finished executions the runtime remembers: the newest keep everything, older ones only their summary."""

from __future__ import annotations

import asyncio

import pytest

from tests.factories import app_yaml, running_engine, wait_until
from workflow_engine.engine.control import Control
from workflow_engine.errors import WorkflowEngineError
from workflow_engine.runtime.execution import ExecutionStatus
from workflow_engine.runtime.runtime import RECENT_EXECUTIONS, RECENT_WHOLE
from workflow_engine.store.records import ExecutionRecord


async def test_older_finished_executions_keep_their_summary_but_not_their_payloads() -> None:
    yaml = app_yaml("""
        echo:
          durable: false
          steps:
            - id: copy
              set: {blob: "{{ input.blob }}", n: "{{ input.n }}"}
            - id: last
              set: {n: "{{ input.n }}"}
    """)
    blob = "x" * 100_000
    async with running_engine(yaml) as engine:
        runs = [await engine.start_execution("echo", {"blob": blob, "n": i}, wait=True)
                for i in range(RECENT_WHOLE + 20)]
        api = Control(engine)
        old_view = await api.execution(runs[0].id)
    for n, execution in enumerate(runs[:20]):  # older than the newest RECENT_WHOLE: the summary only
        assert engine.runtime.get(execution.id) is execution
        assert execution.status is ExecutionStatus.SUCCESS
        assert execution.output == {"n": n}
        assert execution.input is None, "a payload held in memory after the newest executions"
        assert execution.steps == {}
    for n, execution in enumerate(runs[20:], start=20):
        assert execution.input == {"blob": blob, "n": n}
        assert execution.steps["copy"]["output"]["blob"] == blob
    assert (old_view["status"], old_view["output"], old_view["steps"]) == ("success", {"n": 0}, [])


async def test_an_execution_gone_from_memory_before_its_summary_row_is_written_is_still_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    yaml = app_yaml("""
        quick:
          durable: false
          steps:
            - set: {n: "{{ input.n }}"}
    """)
    async with running_engine(yaml) as engine:
        recorder = engine.runtime.recorder
        release = asyncio.Event()
        insert = recorder._insert

        async def held_insert(batch: list[ExecutionRecord]) -> None:  # the store is slow to take the rows
            await release.wait()
            await insert(batch)

        monkeypatch.setattr(recorder, "_insert", held_insert)
        try:
            runs = [await engine.start_execution("quick", {"n": i}, wait=True) for i in range(RECENT_EXECUTIONS + 5)]
            first = runs[0].id
            assert engine.runtime.get(first) is None, "the runtime still holds the oldest execution"
            assert await engine.store.get_execution(first) is None, "its summary row was written already"
            api = Control(engine)
            view = await api.execution(first)
            assert (view["id"], view["status"], view["output"], view["steps"]) == (first, "success", {"n": 0}, [])
        finally:
            release.set()  # also when an assertion failed: the engine stops only once the rows are written
        await wait_until(lambda: recorder.unwritten(first) is None, "the summary rows are written")
        stored = await api.execution(first)
        assert (stored["status"], stored["output"]) == ("success", {"n": 0})
        with pytest.raises(WorkflowEngineError) as missing:
            await api.execution("01a236e2-2483-71ad-868d-71e385965669")
        assert missing.value.http_status == 404
