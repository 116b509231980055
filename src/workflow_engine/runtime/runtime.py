"""The runtime: one admission function for every trigger, execution tasks, cancellation and draining."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from workflow_engine.errors import (
    DrainingError,
    ExecutionCancelledError,
    UnknownWorkflowError,
    WorkflowEngineError,
    WorkflowTimeoutError,
)
from workflow_engine.ids import uuid7
from workflow_engine.observability.metrics import Metrics
from workflow_engine.runtime.admission import Gate
from workflow_engine.runtime.execution import Execution, ExecutionStatus, error_dict
from workflow_engine.runtime.interpreter import run_nodes
from workflow_engine.runtime.program import CompiledWorkflow
from workflow_engine.runtime.step import Services, StepContext

log = structlog.get_logger("workflow_engine.runtime")

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
RECENT_EXECUTIONS = 1000


class _Meters:
    """Metric children of one workflow type, resolved once (label lookups are not free)."""

    def __init__(self, metrics: Metrics, workflow: str) -> None:
        self.active = metrics.active_workflows.labels(workflow)
        self.queued = metrics.queue_depth.labels(workflow)
        self.duration = metrics.workflow_duration.labels(workflow)
        self.finished = {s: metrics.workflow_executions.labels(workflow, s) for s in ("success", "error", "cancelled")}
        self.active.set(0)
        self.queued.set(0)


class Runtime:
    """Admits executions, runs them as owned tasks, and drains them on shutdown."""

    def __init__(self, workflows: dict[str, CompiledWorkflow], metrics: Metrics) -> None:
        self.workflows = workflows
        self.metrics = metrics
        self.gates = {name: Gate(name, wf.defn.concurrency, wf.defn.queue_size) for name, wf in workflows.items()}
        self.meters = {name: _Meters(metrics, name) for name in workflows}
        self.live: dict[str, Execution] = {}
        self.recent: OrderedDict[str, Execution] = OrderedDict()
        self.services: Services | None = None
        self._spawn: Spawn | None = None
        self._trigger_counters: dict[tuple[str, str], Any] = {}
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self, services: Services, spawn: Spawn) -> None:
        """Begin running executions as tasks created by `spawn` (the engine's task group)."""
        self.services = services
        self._spawn = spawn

    # -- admission -------------------------------------------------------------------------------------------

    def count_trigger(self, workflow: str, trigger: str) -> None:
        """Count an event received by a trigger (`trigger_events_total`)."""
        counter = self._trigger_counters.get((workflow, trigger))
        if counter is None:
            counter = self._trigger_counters[(workflow, trigger)] = self.metrics.trigger_events.labels(
                workflow, trigger)
        counter.inc()

    def admit(self, workflow: str, input: Any, *, trigger: str, parent_id: str | None = None,
              counted: bool = False, lifecycle_events: bool = True) -> Execution:
        """The one admission function: run now, queue, or refuse (QueueFullError, DrainingError).

        `counted` says the trigger already counted the event (it counts on receipt, before its own checks).
        `lifecycle_events` False keeps the execution from publishing `workflow.*`/`step.*` events (executions
        started by such events would otherwise feed each other forever).
        """
        if not counted:
            self.count_trigger(workflow, trigger)
        gate = self._gate(workflow)
        if not self.accepting:
            raise DrainingError("engine is shutting down; no new executions are accepted")
        execution = Execution(uuid7(), workflow, input, trigger, parent_id)
        execution.lifecycle_events = lifecycle_events
        run_now = gate.offer(execution)
        self.live[execution.id] = execution
        self._idle.clear()
        if run_now:
            self._launch(execution)
        else:
            self.meters[workflow].queued.inc()
        return execution

    async def admit_waiting(
        self, workflow: str, input: Any, *, trigger: str, parent_id: str | None = None, lifecycle_events: bool = True
    ) -> Execution:
        """Like `admit`, but wait for room in the queue instead of refusing (back-pressure)."""
        gate = self._gate(workflow)
        await gate.wait_for_room()
        return self.admit(workflow, input, trigger=trigger, parent_id=parent_id, lifecycle_events=lifecycle_events)

    def _gate(self, workflow: str) -> Gate:
        gate = self.gates.get(workflow)
        if gate is None:
            raise UnknownWorkflowError(f"no workflow named '{workflow}'")
        return gate

    def _launch(self, execution: Execution) -> None:
        assert self._spawn is not None, "runtime.start() must run before executions are admitted"
        execution.task = self._spawn(self._run(execution), f"execution:{execution.workflow}:{execution.id}")

    # -- running ---------------------------------------------------------------------------------------------

    async def _run(self, execution: Execution) -> None:
        assert self.services is not None
        if execution.cancel_requested:  # cancelled after it was launched, before its task first ran
            self._settle_unstarted(execution)
            self._release(execution, None)
            return
        workflow = self.workflows[execution.workflow]
        meters = self.meters[execution.workflow]
        execution.status = ExecutionStatus.RUNNING
        execution.started_at = time.time()
        meters.active.inc()
        structlog.contextvars.bind_contextvars(execution_id=execution.id, workflow_type=execution.workflow)
        logger = log.bind(execution_id=execution.id, workflow_type=execution.workflow)
        ctx = StepContext(execution, self.services, logger)
        scope: dict[str, Any] = {
            "input": execution.input, "steps": execution.steps, "env": self.services.env,
            "execution": {"id": execution.id, "workflow": execution.workflow, "attempt": execution.attempt},
        }
        await self._lifecycle("workflow.started", execution)
        started = time.perf_counter()
        status = ExecutionStatus.ERROR
        try:
            output = await self._body(workflow, ctx, scope)
            status = ExecutionStatus.SUCCESS
            execution.finish(status, output)
        except asyncio.CancelledError:
            status = ExecutionStatus.CANCELLED
            execution.finish(status, exc=ExecutionCancelledError(f"execution {execution.id} was cancelled"))
            raise
        except Exception as exc:
            await self._failed(workflow, ctx, scope, exc)
        finally:
            self._finished(execution, status, time.perf_counter() - started)
        await self._lifecycle(
            "workflow.completed" if status is ExecutionStatus.SUCCESS else "workflow.failed", execution)

    async def _body(self, workflow: CompiledWorkflow, ctx: StepContext, scope: dict[str, Any]) -> Any:
        if workflow.timeout is None:
            return await run_nodes(workflow.steps, ctx, scope)
        try:
            async with asyncio.timeout(workflow.timeout):
                return await run_nodes(workflow.steps, ctx, scope)
        except TimeoutError as exc:
            raise WorkflowTimeoutError(
                f"workflow '{workflow.name}' timed out after {workflow.timeout:g}s") from exc

    async def _failed(self, workflow: CompiledWorkflow, ctx: StepContext, scope: dict[str, Any],
                      exc: Exception) -> None:
        execution = ctx.execution
        details = error_dict(exc)
        ctx.log.error("execution failed", step=details.get("step"), error_code=details["code"],
                      error={"type": type(exc).__name__, "message": details["message"]})
        if workflow.on_error:
            scope["error"] = details
            try:
                await run_nodes(workflow.on_error, ctx, scope)
            except asyncio.CancelledError:
                raise
            except Exception as handler_exc:  # the original error stays the execution's error
                ctx.log.error("on_error steps failed", error=handler_exc)
        execution.finish(ExecutionStatus.ERROR, exc=exc)

    def _finished(self, execution: Execution, status: ExecutionStatus, seconds: float) -> None:
        meters = self.meters[execution.workflow]
        meters.active.dec()
        meters.finished[status.value].inc()
        meters.duration.observe(seconds)
        self._forget(execution)
        self._release(execution, seconds)

    def _release(self, execution: Execution, seconds: float | None) -> None:
        """Free the execution's slot; the next queued execution takes it. `seconds` None: it never ran."""
        gate = self.gates[execution.workflow]
        nxt = gate.release(gate.recent_seconds if seconds is None else seconds)
        if nxt is not None:
            self.meters[execution.workflow].queued.dec()
            self._launch(nxt)

    def _forget(self, execution: Execution) -> None:
        self.live.pop(execution.id, None)
        self.recent[execution.id] = execution
        if len(self.recent) > RECENT_EXECUTIONS:
            self.recent.popitem(last=False)
        if not self.live:
            self._idle.set()

    async def _lifecycle(self, topic: str, execution: Execution) -> None:
        assert self.services is not None
        bus = self.services.bus
        if execution.lifecycle_events and bus.wants(topic):
            await bus.publish(topic, {
                "execution_id": execution.id, "workflow": execution.workflow, "status": str(execution.status),
                "trigger": execution.trigger, "error": execution.error,
            })

    # -- control ---------------------------------------------------------------------------------------------

    def get(self, execution_id: str) -> Execution | None:
        return self.live.get(execution_id) or self.recent.get(execution_id)

    def cancel(self, execution_id: str) -> Execution:
        """Cancel a queued or running execution; finished ones are returned unchanged."""
        execution = self.get(execution_id)
        if execution is None:
            raise WorkflowEngineError(f"no execution '{execution_id}'", code="not_found", http_status=404)
        if execution.finished:
            return execution
        execution.cancel_requested = True
        if execution.task is None:  # waiting in the queue
            if self.gates[execution.workflow].remove_queued(execution):
                self.meters[execution.workflow].queued.dec()
            self._settle_unstarted(execution)
        elif execution.status is ExecutionStatus.RUNNING:
            execution.task.cancel(f"execution {execution_id} cancelled")
        # else launched but not yet running: a task cancelled before its first step never enters `_run`, which
        # would leave the slot taken and `done` unresolved; `_run` sees `cancel_requested` and settles it instead.
        return execution

    def _settle_unstarted(self, execution: Execution) -> None:
        execution.finish(ExecutionStatus.CANCELLED,
                         exc=ExecutionCancelledError(f"execution {execution.id} was cancelled"))
        self.meters[execution.workflow].finished["cancelled"].inc()
        self._forget(execution)

    async def drain(self, grace: float) -> None:
        """Stop intake, let running and queued executions finish within `grace`, then cancel the rest by name."""
        self.accepting = False
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return
        except TimeoutError:
            pass
        for gate in self.gates.values():
            for execution in gate.drain_queue():
                self.meters[execution.workflow].queued.dec()
                self._settle_unstarted(execution)
        running = [e for e in self.live.values() if e.task is not None]
        for execution in running:
            log.warning("cancelling execution still running after shutdown grace", execution_id=execution.id,
                        workflow_type=execution.workflow, task=execution.task.get_name() if execution.task else None)
            execution.cancel_requested = True
            if execution.task is not None and execution.status is ExecutionStatus.RUNNING:
                execution.task.cancel("shutdown grace period expired")
        tasks = [e.task for e in running if e.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
