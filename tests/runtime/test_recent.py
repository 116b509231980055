"""Finished executions the runtime remembers: the newest keep everything, older ones only their summary."""

from __future__ import annotations

from tests.factories import app_yaml, running_engine
from workflow_engine.engine.control import Control
from workflow_engine.runtime.execution import ExecutionStatus
from workflow_engine.runtime.runtime import RECENT_WHOLE


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
