"""The runtime: admission through the engine, queue and active gauges, cancellation, draining, lifecycle events."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.factories import (
    app_yaml,
    executions,
    finished_runs,
    running_engine,
    sample,
    wait_done,
    wait_until,
)
from workflow_engine.engine.engine import Engine
from workflow_engine.errors import DrainingError, QueueFullError, UnknownWorkflowError, WorkflowEngineError
from workflow_engine.runtime.execution import Execution, ExecutionStatus

SLOW = app_yaml("""
    slow:
      concurrency: 1
      queue_size: 1
      steps:
        - id: nap
          sleep: 60s
""")


def gauge(engine: Engine, metric: str, workflow: str) -> float:
    return sample(engine.metrics, metric, workflow_type=workflow)


async def next_millisecond() -> None:
    """Wait until the wall clock's millisecond (the UUIDv7 timestamp) has moved on."""
    start = time.time_ns() // 1_000_000
    await wait_until(lambda: time.time_ns() // 1_000_000 > start, "the clock ticks")


async def running(execution: Execution) -> Execution:
    await wait_until(lambda: execution.status is ExecutionStatus.RUNNING, f"{execution.id} runs")
    return execution


async def test_full_queue_refuses_and_the_gauges_show_running_and_queued() -> None:
    async with running_engine(SLOW) as engine:
        runtime = engine.runtime
        first = await running(await runtime.admit("slow", {}, trigger="manual"))
        second = await runtime.admit("slow", {}, trigger="manual")
        assert second.status is ExecutionStatus.QUEUED
        assert gauge(engine, "workflow_queue_depth", "slow") == 1
        assert gauge(engine, "active_workflows", "slow") == 1
        with pytest.raises(QueueFullError) as caught:
            await runtime.admit("slow", {}, trigger="manual")
        assert caught.value.retry_after >= 1
        assert sample(engine.metrics, "trigger_events_total", workflow_type="slow", trigger="manual") == 3

        await runtime.cancel(first.id)
        await running(second)  # the queued execution took the freed slot
        assert gauge(engine, "workflow_queue_depth", "slow") == 0
        assert gauge(engine, "active_workflows", "slow") == 1
        await runtime.cancel(second.id)
        await wait_done(second)
        assert gauge(engine, "active_workflows", "slow") == 0
        assert executions(engine.metrics, "slow", "cancelled") == 2


async def test_active_workflows_rises_while_running_and_returns_to_zero() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - sleep: 20ms
            - set: {a: 1}
    """)) as engine:
        assert gauge(engine, "active_workflows", "w") == 0
        execution = await running(await engine.runtime.admit("w", {}, trigger="manual"))
        assert gauge(engine, "active_workflows", "w") == 1
        await wait_done(execution)
        assert gauge(engine, "active_workflows", "w") == 0
        assert executions(engine.metrics, "w", "success") == 1
        assert sample(engine.metrics, "workflow_duration_seconds_count", workflow_type="w") == 1


async def test_a_finished_execution_frees_its_slot_before_its_end_is_committed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrency 1: the next execution runs while the first one's end write waits (its steps are done);
    the first is answered, counted and forgotten only once its end is in the store (live until then, so a
    drain waits for it)."""
    async with running_engine(app_yaml("""
        w:
          concurrency: 1
          queue_size: 5
          steps:
            - sleep: 10ms
            - set: {n: "{{ input.n }}"}
    """)) as engine:
        store, runtime = engine.store, engine.runtime
        real_finish, release = store.finish_execution, asyncio.Event()
        held: list[str] = []

        async def held_finish(execution_id: str, *args: Any, **kwargs: Any) -> None:
            if not held:
                held.append(execution_id)
                await release.wait()
            await real_finish(execution_id, *args, **kwargs)

        monkeypatch.setattr(store, "finish_execution", held_finish)
        first = await runtime.admit("w", {"n": 1}, trigger="manual")
        second = await runtime.admit("w", {"n": 2}, trigger="manual")
        await wait_until(lambda: held == [first.id], "the first end write waits")
        await wait_done(second)
        assert (second.status, second.output) == (ExecutionStatus.SUCCESS, {"n": 2})
        assert not first.done.done()
        assert runtime.live == {first.id: first}
        assert executions(engine.metrics, "w", "success") == 1
        assert gauge(engine, "active_workflows", "w") == 0
        release.set()
        await wait_done(first)
        record = await store.get_execution(first.id)
        assert record is not None
        assert record.status == "success"
        assert executions(engine.metrics, "w", "success") == 2


async def test_cancel_a_running_execution() -> None:
    async with running_engine(SLOW) as engine:
        execution = await running(await engine.runtime.admit("slow", {}, trigger="manual"))
        assert await engine.runtime.cancel(execution.id) is execution
        await wait_done(execution)
        assert execution.status is ExecutionStatus.CANCELLED
        assert execution.error is not None
        assert execution.error["code"] == "cancelled"
        assert executions(engine.metrics, "slow", "cancelled") == 1
        assert executions(engine.metrics, "slow", "error") == 0
        assert gauge(engine, "active_workflows", "slow") == 0
        assert engine.runtime.get(execution.id) is execution


async def test_cancel_a_queued_execution() -> None:
    async with running_engine(SLOW) as engine:
        first = await running(await engine.runtime.admit("slow", {}, trigger="manual"))
        queued = await engine.runtime.admit("slow", {}, trigger="manual")
        await engine.runtime.cancel(queued.id)
        assert queued.status is ExecutionStatus.CANCELLED
        assert queued.done.done()
        assert queued.started_at is None
        assert gauge(engine, "workflow_queue_depth", "slow") == 0
        assert executions(engine.metrics, "slow", "cancelled") == 1
        assert first.status is ExecutionStatus.RUNNING
        # Its place in the queue is free again.
        again = await engine.runtime.admit("slow", {}, trigger="manual")
        assert again.status is ExecutionStatus.QUEUED
        await engine.runtime.cancel(again.id)
        await engine.runtime.cancel(first.id)
        await wait_done(first)


async def test_cancel_right_after_admission_runs_no_step() -> None:
    async with running_engine(app_yaml("""
        w:
          concurrency: 1
          steps:
            - id: work
              set: {ran: true}
    """)) as engine:
        cancelled = await engine.runtime.admit("w", {}, trigger="manual")
        await engine.runtime.cancel(cancelled.id)
        await wait_done(cancelled)
        later = await wait_done(await engine.runtime.admit("w", {}, trigger="manual"))
        assert cancelled.status is ExecutionStatus.CANCELLED
        assert cancelled.steps == {}
        assert later.status is ExecutionStatus.SUCCESS  # the slot was given back
        assert executions(engine.metrics, "w", "cancelled") == 1
        assert executions(engine.metrics, "w", "success") == 1
        assert gauge(engine, "active_workflows", "w") == 0


async def test_cancel_of_a_finished_execution_changes_nothing_and_unknown_ids_are_404() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - set: {a: 1}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert (await engine.runtime.cancel(execution.id)).status is ExecutionStatus.SUCCESS
        with pytest.raises(WorkflowEngineError) as caught:
            await engine.runtime.cancel("no-such-execution")
        assert caught.value.http_status == 404
        with pytest.raises(UnknownWorkflowError):
            await engine.runtime.admit("nope", {}, trigger="manual")


async def test_drain_lets_short_executions_finish_and_cancels_the_rest_after_grace() -> None:
    async with running_engine(app_yaml("""
        short:
          steps:
            - sleep: 10ms
            - set: {finished: true}
        long:
          concurrency: 1
          durable: false   # durable ones are interrupted and left to the next replica, not cancelled
          steps:
            - sleep: 60s
    """, engine="{shutdown_grace: 1s, park_after: 1h}")) as engine:
        short = await engine.runtime.admit("short", {}, trigger="manual")
        long = await running(await engine.runtime.admit("long", {}, trigger="manual"))
        queued = await engine.runtime.admit("long", {}, trigger="manual")
        engine.request_stop()
        await wait_until(lambda: not engine.runtime.accepting, "the runtime stops accepting")
        assert engine.health.readiness()[0] is False
        with pytest.raises(DrainingError):
            await engine.runtime.admit("short", {}, trigger="manual")
        for execution in (short, long, queued):
            await wait_done(execution)
        assert short.status is ExecutionStatus.SUCCESS
        assert short.output == {"finished": True}
        assert long.status is ExecutionStatus.CANCELLED
        assert queued.status is ExecutionStatus.CANCELLED
        assert queued.started_at is None
        assert executions(engine.metrics, "long", "cancelled") == 2
        assert gauge(engine, "workflow_queue_depth", "long") == 0


async def test_drain_returns_as_soon_as_everything_finished() -> None:
    # A grace far longer than the work: the engine must stop when the work is done, not when grace ends.
    async with running_engine(app_yaml("""
        w:
          steps:
            - sleep: 10ms
    """, engine="{shutdown_grace: 60s}")) as engine:
        execution = await engine.runtime.admit("w", {}, trigger="manual")
        engine.request_stop()
        await wait_done(execution)
    assert execution.status is ExecutionStatus.SUCCESS


async def test_lifecycle_events_reach_an_event_triggered_workflow() -> None:
    async with running_engine(app_yaml("""
        hello:
          steps:
            - id: greet
              set: {hi: true}
        broken:
          steps:
            - id: boom
              fail: {message: "no", code: nope}
        watch:
          trigger: {event: {topic: ">"}}
          steps:
            - set:
                topic: "{{ input.topic }}"
                workflow: "{{ input.data.workflow }}"
                step: "{{ input.data.step }}"
                status: "{{ input.data.status }}"
    """)) as engine:
        hello = await engine.start_execution("hello", wait=True)
        await engine.start_execution("broken", wait=True)
        await wait_until(lambda: executions(engine.metrics, "watch", "success") >= 8, "8 events were handled")
        await engine.bus.drain(5)
        await wait_until(lambda: not engine.runtime.live, "no execution runs")
        seen = sorted((e.output["topic"], e.output["workflow"], e.output["step"] or "")
                      for e in finished_runs(engine, "watch"))
        hello_events = [e for e in finished_runs(engine, "watch") if e.output["workflow"] == "hello"]
    assert seen == sorted([
        ("workflow.started", "hello", ""), ("step.started", "hello", "greet"),
        ("step.completed", "hello", "greet"), ("workflow.completed", "hello", ""),
        ("workflow.started", "broken", ""), ("step.started", "broken", "boom"),
        ("step.failed", "broken", "boom"), ("workflow.failed", "broken", ""),
    ])
    assert {e.input["data"]["execution_id"] for e in hello_events} == {hello.id}
    assert sum(e.trigger == "event" for e in finished_runs(engine, "watch")) == 8


async def test_two_lifecycle_listeners_do_not_feed_each_other_forever() -> None:
    async with running_engine(app_yaml("""
        hello:
          steps:
            - set: {hi: true}
        watch-a:
          trigger: {event: {topic: "workflow.completed"}}
          steps:
            - set: {seen: "{{ input.data.workflow }}"}
        watch-b:
          trigger: {event: {topic: "workflow.completed"}}
          steps:
            - set: {seen: "{{ input.data.workflow }}"}
    """)) as engine:
        await engine.start_execution("hello", wait=True)
        await wait_until(lambda: executions(engine.metrics, "watch-a", "success") == 1
                         and executions(engine.metrics, "watch-b", "success") == 1, "both saw hello complete")
        await engine.bus.drain(5)
        await wait_until(lambda: not engine.runtime.live, "no execution runs")
        # Runs started by lifecycle events publish none themselves: one run each, not an endless ping-pong.
        assert executions(engine.metrics, "watch-a", "success") == 1
        assert executions(engine.metrics, "watch-b", "success") == 1


async def test_execution_ids_are_uuid7_and_grow_over_time() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - set: {a: 1}
    """)) as engine:
        ids = []
        for _ in range(3):
            ids.append((await engine.start_execution("w", wait=True)).id)
            await next_millisecond()
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


async def test_two_engines_in_one_process_do_not_share_metrics() -> None:
    yaml_text = app_yaml("""
        w:
          steps:
            - set: {a: 1}
    """)
    async with running_engine(yaml_text) as one, running_engine(yaml_text) as two:
        await one.start_execution("w", wait=True)
        await asyncio.gather(*(two.start_execution("w", wait=True) for _ in range(2)))
        assert executions(one.metrics, "w", "success") == 1
        assert executions(two.metrics, "w", "success") == 2
