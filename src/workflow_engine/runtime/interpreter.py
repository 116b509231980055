"""The step interpreter: runs step nodes in order with guard, timeout, retry and continue_on_error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from workflow_engine.errors import StepError, StepTimeoutError, WorkflowEngineError
from workflow_engine.runtime.execution import Response, error_dict
from workflow_engine.runtime.retry import retry_delay
from workflow_engine.runtime.step import PATH_KEY, Scope, StepContext, StepNode, step_attempt, step_deadline, step_key
from workflow_engine.runtime.templates import truthy


async def run_nodes(nodes: Sequence[StepNode], ctx: StepContext, scope: Scope) -> Any:
    """Run `nodes` in order; the output of the last step that ran is the result."""
    output: Any = None
    direct = ctx.direct
    durable = ctx.durable
    for node in nodes:
        if not (direct and (node.direct_durable if durable else node.direct)):
            output = await run_node(node, ctx, scope)
            continue
        # `run_node` for a synchronous step of an execution nobody observes step by step (`ctx.direct`): no
        # `step.*` events, no retry or timeout, so no coroutine per step either; a durable execution's
        # checkpoint of it goes with its next write, as `run_node` would defer it.
        key = scope.get(PATH_KEY, "") + node.id if durable else node.id
        if node.guard is not None and not truthy(node.guard.render(scope)):
            if node.record:
                scope["steps"][node.id] = {"output": None, "status": "skipped"}
            if durable:
                ctx.services.runtime.recorder.defer_step(ctx.execution, key, "skipped", None, time.time())
            output = None
            continue
        token = step_key.set(key)
        started = time.perf_counter()
        started_at = time.time() if durable else 0.0
        try:
            output = node.step.run_sync(ctx, scope)  # type: ignore[attr-defined]  # `direct`: a SyncStep
            if node.record:
                scope["steps"][node.id] = {"output": output, "status": "success"}
            if durable:
                ctx.services.runtime.recorder.defer_step(ctx.execution, key, "success", output, started_at)
        except Exception as exc:
            output = await _direct_failed(node, ctx, scope, exc, started, key=key, started_at=started_at)
        finally:
            step_key.reset(token)
    return output


async def _direct_failed(node: StepNode, ctx: StepContext, scope: Scope, exc: Exception, started: float, *,
                         key: str, started_at: float) -> Any:
    """A direct step failed: as `run_node` handles it."""
    error = _as_step_error(exc, node)
    await _step_failed(node, ctx, scope, error, started)
    await _checkpoint(ctx, key, "error", None, error_dict(error), started_at=started_at)
    if not node.continue_on_error:
        raise error from exc
    return None


async def run_node(node: StepNode, ctx: StepContext, scope: Scope) -> Any:
    """Run one step with its common behaviour and record its result in `scope['steps']` (and, for durable
    workflows, as a checkpoint in the store before the next step runs)."""
    key = scope.get(PATH_KEY, "") + node.id if ctx.durable else node.id
    if ctx.execution.checkpoints:
        restored = _restore(node, ctx, scope, key)
        if restored is not _NOT_DONE:
            return restored
    if node.guard is not None and node.kind != "if" and not truthy(node.guard.render(scope)):
        if node.record:
            scope["steps"][node.id] = {"output": None, "status": "skipped"}
            await _checkpoint(ctx, key, "skipped", None, None, started_at=time.time(), defer=True)
        return None
    bus = ctx.services.bus
    events = ctx.execution.lifecycle_events
    if events and bus.wants("step.started"):
        await bus.publish("step.started", _step_event(ctx, node, "started"))
    started = time.perf_counter()
    started_at = time.time()
    token = step_key.set(key)
    try:
        output = await _attempts(node, ctx, scope)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = _as_step_error(exc, node)
        await _step_failed(node, ctx, scope, error, started)
        await _checkpoint(ctx, key, "error", None, error_dict(error), started_at=started_at)
        if not node.continue_on_error:
            raise error from exc
        return None
    finally:
        step_key.reset(token)
    if node.record:
        scope["steps"][node.id] = {"output": output, "status": "success"}
    await _checkpoint(ctx, key, "success", output, None, started_at=started_at,
                      extra=_response_extra(ctx) if node.kind == "respond" else None, defer=node.step.replayable)
    if events and bus.wants("step.completed"):
        event = _step_event(ctx, node, "completed", seconds=time.perf_counter() - started)
        await bus.publish("step.completed", event)
    return output


_NOT_DONE = object()


def _restore(node: StepNode, ctx: StepContext, scope: Scope, key: str) -> Any:
    """The recorded result of a step that completed before a crash or park, or _NOT_DONE."""
    checkpoint = ctx.execution.checkpoints.get(key)
    if checkpoint is None:
        return _NOT_DONE
    done = checkpoint.status in ("success", "skipped") or (checkpoint.status == "error" and node.continue_on_error)
    if not done:
        return _NOT_DONE  # failed, sleeping or waiting: run it (again)
    entry: dict[str, Any] = {"output": checkpoint.output, "status": checkpoint.status}
    if checkpoint.error is not None:
        entry["error"] = checkpoint.error
    if node.record:
        scope["steps"][node.id] = entry
    if node.kind == "respond" and "status" in checkpoint.extra:
        ctx.execution.set_response(Response(checkpoint.extra["status"], checkpoint.output,
                                            checkpoint.extra.get("headers", {})))
    return checkpoint.output


async def _checkpoint(ctx: StepContext, key: str, status: str, output: Any, error: dict[str, Any] | None, *,
                      started_at: float, extra: dict[str, Any] | None = None, defer: bool = False) -> None:
    """Checkpoint a step of a durable execution; `defer` (a skipped or replayable step): with its next write."""
    if ctx.durable:
        await ctx.services.runtime.recorder.step(ctx.execution, key, status, output, error, started_at=started_at,
                                                 extra=extra, defer=defer)


def _response_extra(ctx: StepContext) -> dict[str, Any] | None:
    response = ctx.execution.response
    return {"status": response.status, "headers": response.headers} if response is not None else None


async def _attempts(node: StepNode, ctx: StepContext, scope: Scope) -> Any:
    attempts = node.retry.attempts if node.retry else 1
    attempt = 1
    while True:
        token = step_attempt.set(attempt)
        try:
            return await _attempt(node, ctx, scope)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if attempt >= attempts or not getattr(exc, "retryable", True) or node.retry is None:
                raise
            delay = retry_delay(node.retry, attempt)
            ctx.log.warning("step attempt failed, retrying", step=node.id, attempt=attempt,
                            delay=round(delay, 3), error=exc)
            attempt += 1
            await asyncio.sleep(delay)
        finally:
            step_attempt.reset(token)


async def _attempt(node: StepNode, ctx: StepContext, scope: Scope) -> Any:
    if node.timeout is None:
        return await node.step.run(ctx, scope)
    token = step_deadline.set(asyncio.get_running_loop().time() + node.timeout)
    try:
        async with asyncio.timeout(node.timeout):
            return await node.step.run(ctx, scope)
    except TimeoutError as exc:
        raise StepTimeoutError(
            f"step '{node.id}' timed out after {node.timeout:g}s", step=node.id
        ) from exc
    finally:
        step_deadline.reset(token)


def _as_step_error(exc: Exception, node: StepNode) -> WorkflowEngineError:
    if isinstance(exc, StepError):
        if exc.step is None:
            exc.step = node.id
        return exc
    if isinstance(exc, WorkflowEngineError):
        return exc
    return StepError(f"step '{node.id}' ({node.kind}) failed: {type(exc).__name__}: {exc}", step=node.id,
                     code="internal_error")


async def _step_failed(
    node: StepNode, ctx: StepContext, scope: Scope, error: WorkflowEngineError, started: float
) -> None:
    details = error_dict(error)
    if node.record:
        scope["steps"][node.id] = {"output": None, "status": "error", "error": details}
    if isinstance(error, StepError) and error.step not in (None, node.id):
        return  # a nested step failed: it was logged and published where it happened
    log = ctx.log.warning if node.continue_on_error else ctx.log.error
    log("step failed", step=node.id, step_kind=node.kind, error_code=details["code"],
        error={"type": type(error).__name__, "message": error.message},
        continue_on_error=node.continue_on_error)
    bus = ctx.services.bus
    if ctx.execution.lifecycle_events and bus.wants("step.failed"):
        event = _step_event(ctx, node, "failed", seconds=time.perf_counter() - started, error=details)
        await bus.publish("step.failed", event)


def _step_event(ctx: StepContext, node: StepNode, status: str, **extra: Any) -> dict[str, Any]:
    execution = ctx.execution
    return {"execution_id": execution.id, "workflow": execution.workflow, "step": node.id, "kind": node.kind,
            "status": status, **extra}
