"""Inline executions (run in the admitting caller's task) and direct steps (synchronous steps run as plain calls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.factories import app_yaml, executions, load_app, running_engine, wait_until
from workflow_engine.modules.eventbus.memory import Event
from workflow_engine.registry.builtins import default_registry
from workflow_engine.runtime.execution import Execution, ExecutionStatus
from workflow_engine.runtime.program import compile_program

APP = app_yaml("""
    shape:
      durable: false
      steps:
        - id: total
          set: {sum: "{{ input.a + input.b }}"}
        - id: answer
          respond: {status: 201, body: "{{ steps.total.output }}"}
    early:
      durable: false
      steps:
        - id: answer
          respond: {body: early}
        - id: nap
          sleep: 60s
    slow:
      durable: false
      steps:
        - id: nap
          sleep: 60s
    kept:
      steps:
        - id: total
          set: {sum: 1}
    observed:
      durable: false
      steps:
        - id: skipped
          if: "{{ false }}"
          set: {x: 1}
        - id: broken
          fail: {message: "no {{ input.what }}", code: broken}
          continue_on_error: true
        - id: after
          set: {ran: true, previous: "{{ steps.broken.status }}"}
""")


def inline_ok(workflows: str) -> dict[str, bool]:
    registry = default_registry()
    program = compile_program(load_app(app_yaml(workflows), registry), registry)
    return {name: workflow.inline_ok for name, workflow in program.items()}


async def test_an_inline_execution_runs_in_the_callers_task_and_has_ended_when_admit_returns() -> None:
    async with running_engine(APP) as engine:
        execution = await engine.runtime.admit("shape", {"a": 2, "b": 3}, trigger="http", inline=True)
        assert execution.task is asyncio.current_task()
        assert execution.status is ExecutionStatus.SUCCESS
        assert execution.response is not None
        assert (execution.response.status, execution.response.body) == (
            201, {"sum": 5})
        assert execution.done.done()
        assert engine.runtime.live == {}
        assert engine.runtime.get(execution.id) is execution
        assert executions(engine.metrics, "shape", "success") == 1


async def test_without_inline_the_execution_gets_a_task_of_its_own() -> None:
    async with running_engine(APP) as engine:
        execution = await engine.runtime.admit("shape", {"a": 1, "b": 1}, trigger="http")
        assert execution.task is not asyncio.current_task()
        await execution.wait_response()
        assert execution.response is not None
        assert execution.response.body == {"sum": 2}


async def test_a_respond_before_other_steps_answers_before_they_run() -> None:
    async with running_engine(APP) as engine:
        runtime = engine.runtime
        execution = await asyncio.wait_for(runtime.admit("early", {}, trigger="http", inline=True), 5)
        await asyncio.wait_for(execution.wait_response(), 5)
        assert execution.response is not None
        assert execution.response.body == "early"
        assert not execution.finished  # the 60 s sleep after the answer runs in the execution's own task
        assert execution.task is not asyncio.current_task()
        await runtime.cancel(execution.id)


async def test_cancelling_an_inline_execution_ends_it_cancelled_and_leaves_the_caller_running() -> None:
    async with running_engine(APP) as engine:
        runtime = engine.runtime
        caller = asyncio.create_task(runtime.admit("slow", {}, trigger="http", inline=True))
        await wait_until(lambda: any(e.status is ExecutionStatus.RUNNING for e in runtime.live.values()),
                         "the inline execution runs")
        (execution,) = runtime.live.values()
        assert execution.task is caller
        await runtime.cancel(execution.id)
        result = await asyncio.wait_for(caller, 5)
        assert result is execution
        assert execution.status is ExecutionStatus.CANCELLED
        assert not caller.cancelled()
        assert executions(engine.metrics, "slow", "cancelled") == 1


async def test_a_cancellation_that_is_not_the_executions_reaches_the_caller() -> None:
    async with running_engine(APP) as engine:
        runtime = engine.runtime
        caller = asyncio.create_task(runtime.admit("slow", {}, trigger="http", inline=True))
        await wait_until(lambda: bool(runtime.live), "the inline execution runs")
        (execution,) = runtime.live.values()
        caller.cancel()  # e.g. the server cancelling the request at shutdown
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert execution.status is ExecutionStatus.CANCELLED  # not left running, not counted as success
        assert runtime.live == {}


async def test_the_drain_cancels_an_inline_straggler_and_its_caller_gets_the_execution() -> None:
    async with running_engine(APP) as engine:
        runtime = engine.runtime
        caller = asyncio.create_task(runtime.admit("slow", {}, trigger="http", inline=True))
        await wait_until(lambda: bool(runtime.live), "the inline execution runs")
        await runtime.drain(0.05)
        execution: Execution = await asyncio.wait_for(caller, 5)
        assert execution.status is ExecutionStatus.CANCELLED


async def test_durable_workflows_are_never_run_inline() -> None:
    async with running_engine(APP) as engine:
        execution = await engine.runtime.admit("kept", {}, trigger="http", inline=True)
        assert execution.task is not asyncio.current_task()
        await asyncio.wait_for(execution.wait_response(), 5)
        assert execution.output == {"sum": 1}


def test_inline_ok_only_when_nothing_runs_after_a_respond_step() -> None:
    assert inline_ok("""
        last: {durable: false, steps: [{set: {a: 1}}, {respond: {body: ok}}]}
        none: {durable: false, steps: [{set: {a: 1}}]}
        branches:
          durable: false
          steps:
            - set: {a: 1}
            - if: "{{ input.x }}"
              then: [{set: {b: 1}}, {respond: {body: yes}}]
              else: [{respond: {body: no}}]
        first: {durable: false, steps: [{respond: {body: ok}}, {set: {a: 1}}]}
        looped:
          durable: false
          steps:
            - foreach: {items: "{{ input.items }}", do: [{respond: {body: ok}}]}
        nested_early:
          durable: false
          steps:
            - if: "{{ input.x }}"
              then: [{respond: {body: yes}}, {set: {b: 1}}]
        handler_early:
          durable: false
          steps: [{fail: {message: "no"}}]
          on_error: [{respond: {body: sorry}}, {log: {message: after}}]
        durable: {steps: [{respond: {body: ok}}]}
    """) == {"last": True, "none": True, "branches": True, "first": False, "looped": False,
             "nested_early": False, "handler_early": False, "durable": False}


async def _observed(engine: Any) -> Execution:
    execution: Execution = await engine.runtime.admit("observed", {"what": "luck"}, trigger="manual", inline=True)
    return execution


@pytest.mark.parametrize("subscribed", [False, True], ids=["direct steps", "step events subscribed"])
async def test_guards_failures_and_continue_on_error_are_the_same_on_both_paths(subscribed: bool) -> None:
    async with running_engine(APP) as engine:
        seen: list[tuple[str, str, str]] = []

        async def record(event: Event) -> None:
            seen.append((event.topic, event.data["step"], event.data.get("error", {}).get("code", "")))

        engine.bus.subscribe("step.failed", record, name="failed")
        if subscribed:  # someone watches steps one by one: the per-step path runs
            engine.bus.subscribe("step.completed", record, name="completed")
        execution = await _observed(engine)
        assert execution.status is ExecutionStatus.SUCCESS
        assert execution.steps["skipped"] == {"output": None, "status": "skipped"}
        assert execution.steps["broken"]["status"] == "error"
        assert execution.steps["broken"]["error"]["code"] == "broken"
        assert execution.steps["after"]["output"] == {"ran": True, "previous": "error"}
        await wait_until(lambda: ("step.failed", "broken", "broken") in seen, "step.failed is published")
        if subscribed:
            await wait_until(lambda: ("step.completed", "after", "") in seen, "step.completed is published")
        else:
            assert all(topic == "step.failed" for topic, _, _ in seen)
