"""`Execution.wait_response`: a waiter that goes away does not break the execution or a later waiter."""

from __future__ import annotations

import asyncio

from workflow_engine.runtime.execution import Execution, ExecutionStatus, Response


async def test_a_cancelled_waiter_leaves_the_execution_answerable() -> None:
    execution = Execution("e1", "w", {}, "http", None)
    first = asyncio.ensure_future(execution.wait_response())
    await asyncio.sleep(0)
    first.cancel()  # the client went away
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    second = asyncio.ensure_future(execution.wait_response())
    await asyncio.sleep(0)
    assert not second.done()
    execution.set_response(Response(201, {"ok": True}, {}))  # must not raise on the cancelled future
    await asyncio.wait_for(second, 1)
    assert execution.response is not None
    assert execution.response.status == 201


async def test_the_waiter_wakes_when_the_execution_finishes_without_a_respond_step() -> None:
    execution = Execution("e2", "w", {}, "http", None)
    waiter = asyncio.ensure_future(execution.wait_response())
    await asyncio.sleep(0)
    execution.finish(ExecutionStatus.SUCCESS, {"done": 1})
    await asyncio.wait_for(waiter, 1)
    assert execution.output == {"done": 1}
