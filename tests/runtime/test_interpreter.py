"""What every step shares: the `if` guard, retry, timeout, continue_on_error; workflow timeout and on_error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.factories import CallCounter, app_yaml, executions, running_engine, sample, serve_app, wait_done
from workflow_engine.errors import FailError, StepTimeoutError, WorkflowTimeoutError
from workflow_engine.observability.metrics import Metrics
from workflow_engine.runtime.execution import ExecutionStatus


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[CallCounter, str]]:
    """An upstream whose first two calls answer 503; yields it and its URL."""
    counter = CallCounter(failures=2)
    async with serve_app(counter.app()) as url:
        yield counter, f"{url}/call"


def http_calls(metrics: Metrics, status: str) -> float:
    """Requests of the engine's default HTTP client with this outcome."""
    return sample(metrics, "module_operations_total", module="http_client", name="default",
                  operation="request", status=status)


async def test_false_guard_skips_the_step_and_the_workflow_goes_on() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: skipped
              if: "{{ input.n > 5 }}"
              set: {ran: true}
            - id: taken
              if: "{{ input.n > 1 }}"
              set: {ran: true}
            - id: last
              set: {skipped_output: "{{ steps.skipped.output }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"n": 2}, wait=True)
    assert execution.status is ExecutionStatus.SUCCESS
    assert execution.steps["skipped"] == {"output": None, "status": "skipped"}
    assert execution.steps["taken"] == {"output": {"ran": True}, "status": "success"}
    assert execution.output == {"skipped_output": None}


async def test_guard_reads_template_truth_of_strings() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: flagged
              if: "{{ input.flag }}"
              set: {ran: true}
    """)) as engine:
        execution = await engine.start_execution("w", {"flag": "false"}, wait=True)
    assert execution.steps["flagged"]["status"] == "skipped"


async def test_retry_runs_a_failing_step_again_until_it_succeeds(flaky: tuple[CallCounter, str]) -> None:
    counter, url = flaky
    async with running_engine(app_yaml(f"""
        w:
          steps:
            - id: call
              http: {{url: "{url}"}}
              retry: {{attempts: 3, backoff: fixed, initial: 1ms, jitter: 0}}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert execution.status is ExecutionStatus.SUCCESS
        assert execution.output["body"] == {"call": 3, "ok": True}
        assert counter.calls == 3
        assert http_calls(engine.metrics, "error") == 2
        assert http_calls(engine.metrics, "success") == 1


async def test_retry_gives_up_after_its_attempts(flaky: tuple[CallCounter, str]) -> None:
    counter, url = flaky
    async with running_engine(app_yaml(f"""
        w:
          steps:
            - id: call
              http: {{url: "{url}"}}
              retry: {{attempts: 2, initial: 1ms}}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.status is ExecutionStatus.ERROR
    assert counter.calls == 2
    assert execution.error is not None
    assert execution.error["code"] == "http_status"
    assert execution.error["step"] == "call"
    assert execution.error["details"]["status"] == 503


async def test_without_retry_a_step_runs_once(flaky: tuple[CallCounter, str]) -> None:
    counter, url = flaky
    async with running_engine(app_yaml(f"""
        w:
          steps:
            - http: {{url: "{url}"}}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.status is ExecutionStatus.ERROR
    assert counter.calls == 1


async def test_retry_counts_attempts_of_any_failing_step() -> None:
    async with running_engine(app_yaml("""
        child:
          steps:
            - fail: {message: "child broke", code: child_broke}
        parent:
          steps:
            - id: run_child
              workflow: child
              retry: {attempts: 3, initial: 1ms, max: 5ms}
    """)) as engine:
        execution = await engine.start_execution("parent", wait=True)
        assert execution.status is ExecutionStatus.ERROR
        assert execution.error is not None
        assert execution.error["code"] == "subworkflow_failed"
        assert executions(engine.metrics, "child", "error") == 3


@pytest.mark.parametrize("step", [
    "validate: {schema: {type: object, required: [id]}, data: {}}",
    "fail: {message: on purpose}",
])
async def test_retry_does_not_repeat_failures_that_cannot_change(step: str) -> None:
    # Were the step retried, its 10 s backoff would outlive the workflow's timeout and the error would be "timeout".
    async with running_engine(app_yaml(f"""
        w:
          timeout: 1s
          steps:
            - id: checked
              {step}
              retry: {{attempts: 3, backoff: fixed, initial: 10s, jitter: 0}}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.status is ExecutionStatus.ERROR
    assert execution.error is not None
    assert execution.error["code"] in {"validation_failed", "failed"}
    assert execution.error["step"] == "checked"


async def test_step_timeout_fails_the_step_with_code_timeout() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: slow
              sleep: 30s
              timeout: 20ms
            - id: after
              set: {ran: true}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.status is ExecutionStatus.ERROR
    assert isinstance(execution.exception, StepTimeoutError)
    assert execution.error is not None
    assert execution.error["code"] == "timeout"
    assert execution.error["step"] == "slow"
    assert execution.steps["slow"]["status"] == "error"
    assert "after" not in execution.steps


async def test_a_timed_out_attempt_is_retried() -> None:
    async with running_engine(app_yaml("""
        slow-child:
          steps:
            - sleep: 30s
        w:
          steps:
            - id: slow
              workflow: slow-child
              timeout: 10ms
              retry: {attempts: 3, initial: 1ms, max: 1ms}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert execution.error is not None
        assert execution.error["code"] == "timeout"
        # Each attempt started a child and its timeout cancelled it: three attempts, three cancelled children.
        children = [e for e in [*engine.runtime.live.values(), *engine.runtime.recent.values()]
                    if e.parent_id == execution.id]
        assert len(children) == 3
        for child in children:
            await wait_done(child)
        assert executions(engine.metrics, "slow-child", "cancelled") == 3


async def test_continue_on_error_records_the_error_and_goes_on() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: broken
              fail: {message: "not today", code: not_today}
              continue_on_error: true
            - id: after
              set:
                status: "{{ steps.broken.status }}"
                code: "{{ steps.broken.error.code }}"
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert executions(engine.metrics, "w", "success") == 1
    assert execution.status is ExecutionStatus.SUCCESS
    assert execution.steps["broken"]["output"] is None
    assert execution.steps["broken"]["error"]["message"] == "not today"
    assert execution.output == {"status": "error", "code": "not_today"}


async def test_a_failing_step_stops_the_workflow() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: broken
              fail: {message: "stop here"}
            - id: never
              set: {ran: true}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert executions(engine.metrics, "w", "error") == 1
    assert isinstance(execution.exception, FailError)
    assert "never" not in execution.steps


async def test_workflow_timeout_ends_the_execution_as_an_error() -> None:
    async with running_engine(app_yaml("""
        w:
          timeout: 50ms
          steps:
            - id: done
              set: {a: 1}
            - id: slow
              sleep: 30s
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
        assert executions(engine.metrics, "w", "error") == 1
        assert executions(engine.metrics, "w", "success") == 0
    assert execution.status is ExecutionStatus.ERROR
    assert isinstance(execution.exception, WorkflowTimeoutError)
    assert execution.error is not None
    assert execution.error["code"] == "timeout"
    assert execution.steps["done"]["status"] == "success"


async def test_on_error_steps_run_with_the_error_in_scope() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: broken
              fail: {message: "out of stock", code: out_of_stock}
          on_error:
            - id: handled
              set:
                code: "{{ error.code }}"
                step: "{{ error.step }}"
                message: "{{ error.message }}"
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.status is ExecutionStatus.ERROR
    assert execution.steps["handled"]["output"] == {"code": "out_of_stock", "step": "broken",
                                                    "message": "out of stock"}
    assert execution.error is not None
    assert execution.error["code"] == "out_of_stock"


async def test_a_failing_on_error_step_keeps_the_original_error() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: broken
              fail: {message: "first", code: first_error}
          on_error:
            - id: handler
              fail: {message: "second", code: second_error}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.error is not None
    assert execution.error["code"] == "first_error"
    assert execution.steps["handler"]["status"] == "error"


async def test_on_error_does_not_run_on_success() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - set: {a: 1}
          on_error:
            - id: handler
              set: {ran: true}
    """)) as engine:
        execution = await engine.start_execution("w", wait=True)
    assert execution.status is ExecutionStatus.SUCCESS
    assert "handler" not in execution.steps


async def test_template_error_at_run_time_fails_the_step() -> None:
    async with running_engine(app_yaml("""
        w:
          steps:
            - id: bad
              set: {x: "{{ input.a + input.b }}"}
    """)) as engine:
        execution = await engine.start_execution("w", {"a": 1, "b": "text"}, wait=True)
    assert execution.error is not None
    assert execution.error["code"] == "template_error"
    assert execution.error["step"] == "bad"
