"""The runtime: one admission function for every trigger, execution tasks, cancellation and draining."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
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
from workflow_engine.observability.logging import bind_log_context
from workflow_engine.observability.metrics import Metrics, WorkflowMeters
from workflow_engine.runtime.admission import Gate
from workflow_engine.runtime.execution import Execution, ExecutionStatus, Response, error_dict
from workflow_engine.runtime.interpreter import run_nodes
from workflow_engine.runtime.parking import Parked
from workflow_engine.runtime.program import CompiledWorkflow, unknown_checkpoints
from workflow_engine.runtime.recorder import KeyTakenError, Recorder
from workflow_engine.runtime.step import Services, StepContext
from workflow_engine.store.records import FINISHED, ExecutionRecord

log = structlog.get_logger("workflow_engine.runtime")

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
# Finished executions kept in memory, for callers that read them right after the end (the API, a repeated
# Idempotency-Key, in-process callers). Every one of them is also in the store, or queued to be (a `durable:
# false` summary row: `Control.execution` looks there too), so this is a cache, kept small on purpose: a
# thousand held executions (a hundred whole), each freed long after it was last touched, cost an HTTP route
# ~10 % of its CPU per request, and the cyclic collector only a small part of that (bench/RESULTS.md).
RECENT_EXECUTIONS = 100
# Of those, the newest keep their input and step outputs; older ones keep only their summary (status, output,
# error, times), so large payloads do not hold memory for the next executions.
RECENT_WHOLE = 10
# Idempotency keys of the newest executions admitted with `key_presumed_new` (key -> execution id): a key seen
# here again (a message published twice) is not presumed new, so a second execution does not run beside the
# first while the first has no row yet. Ids only: the executions themselves are not held.
RECENT_KEYS = 10_000


class Runtime:
    """Admits executions, runs them as owned tasks, and drains them on shutdown."""

    def __init__(self, workflows: dict[str, CompiledWorkflow], metrics: Metrics, recorder: Recorder) -> None:
        self.workflows = workflows
        self.metrics = metrics
        self.recorder = recorder
        # Resolved once (binding the module's lazy proxy re-resolves the logger on every execution).
        self._log = log.bind()
        self.poll_interval = 0.5
        self.park_after = 30.0
        self.gates = {name: Gate(name, wf.defn.concurrency, wf.defn.queue_size) for name, wf in workflows.items()}
        self.meters = {name: WorkflowMeters(metrics, name) for name in workflows}
        self.live: dict[str, Execution] = {}
        self.recent: OrderedDict[str, Execution] = OrderedDict()
        self._whole: deque[Execution] = deque()
        self._keys: dict[str, str] = {}
        self.services: Services | None = None
        self._spawn: Spawn | None = None
        self._trigger_counters: dict[tuple[str, str], Any] = {}
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    def swap(self, workflows: dict[str, CompiledWorkflow]) -> None:
        """Admit into a new program from now on (config apply); executions already admitted keep theirs.

        Gates and meters of workflows that are gone stay, for the executions still draining out of them.
        """
        for name, workflow in workflows.items():
            gate = self.gates.get(name)
            if gate is None:
                self.gates[name] = Gate(name, workflow.defn.concurrency, workflow.defn.queue_size)
                self.meters[name] = WorkflowMeters(self.metrics, name)
            else:
                gate.concurrency = workflow.defn.concurrency
                gate.queue_size = workflow.defn.queue_size
        self.workflows = workflows

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

    async def admit(
        self, workflow: str, input: Any, *, trigger: str, idempotency_key: str | None = None,
        parent_id: str | None = None, counted: bool = False, lifecycle_events: bool = True, wait: bool = False,
        inline: bool = False, key_presumed_new: bool = False,
    ) -> Execution:
        """The one admission function: record the execution, then run it now, queue it, or refuse it.

        Refusals: QueueFullError (or, with `wait`, wait for room: back-pressure), DrainingError,
        UnknownWorkflowError. A duplicate `idempotency_key` returns the execution it started first.
        `counted` says the trigger already counted the event; `lifecycle_events` False keeps the execution
        from publishing `workflow.*`/`step.*` events (executions started by those would feed each other).
        `inline`: the caller waits for the end anyway (a synchronous HTTP request), so an execution that may
        start at once runs in the caller's task and has finished when this returns; no task of its own, no
        wake-up. Only for `durable: false` workflows whose answer is known at their end (`inline_ok`): with a
        `respond` step before other steps, the caller must get its answer before the rest runs. With `wait`
        too (a message handler), any execution waits for a free slot, not a queue place, and runs in the
        caller's task, durable ones too: nobody waits for an answer but the handler, whose task is cancelled
        only when the engine stops consuming; an interrupted durable execution then stays in the store as it
        would in a task of its own (or, with no row yet, its unacked message is delivered again).
        `key_presumed_new`: the caller has no reason to think the key was used (a message's first delivery): a
        `durable: false` execution is then written only at its end, with the key, and a durable one with its
        first write (`Execution.unrecorded`); if another execution has the key by then, its `end_error` is a
        `KeyTakenError` and the caller admits it again without this.
        """
        gate = self._gate(workflow)  # unknown names are refused before they become metric series
        if not counted:
            self.count_trigger(workflow, trigger)
        if not self.accepting:
            raise DrainingError("engine is shutting down; no new executions are accepted")
        if wait:
            if inline:
                # The caller holds its work until the end anyway (a message): wait for a slot rather than
                # queue. The execution then runs in the caller's task (a queued one would need a task of its
                # own and a wake-up); a durable one is written `running`, not `queued` and then `running` when
                # a slot frees (one store write fewer).
                await gate.wait_for_slot()
            else:
                await gate.wait_for_room()
            if not self.accepting:  # the engine began to shut down while this waited
                raise DrainingError("engine is shutting down; no new executions are accepted")
        if key_presumed_new and idempotency_key is not None:
            seen = self._keys.get(idempotency_key)
            if seen is not None:
                earlier = self.get(seen)
                if earlier is not None:
                    return earlier  # the caller waits for its outcome, as for a key found in the store
                key_presumed_new = False  # forgotten here: the store has it (or its row is on the way)
        gate.reserve()
        execution = Execution(uuid7(), workflow, input, trigger, parent_id)
        execution.lifecycle_events = lifecycle_events
        execution.idempotency_key = idempotency_key
        if key_presumed_new and idempotency_key is not None:
            execution.key_presumed_new = True
            keys = self._keys
            keys[idempotency_key] = execution.id
            if len(keys) > RECENT_KEYS:
                del keys[next(iter(keys))]
        execution.program = self.workflows[workflow]
        predicted = gate.active < gate.concurrency and not gate.queue
        try:
            existing = await self.recorder.create(
                execution, running=predicted, durable=self.workflows[workflow].defn.durable)
        except BaseException:
            gate.unreserve()
            raise
        if existing is not None:
            gate.unreserve()
            return self.get(existing.id) or Execution.from_record(existing)
        run_now = gate.commit(execution)
        if predicted and not run_now:
            execution.started_at = None  # it waits after all: it is marked running when it starts
        if inline and run_now and (wait or execution.program.inline_ok):
            await self._run_inline(execution)
        else:
            self._enter(execution, run_now)
        return execution

    async def _run_inline(self, execution: Execution) -> None:
        """Run `execution` to its end in the current task (see `admit`'s `inline`)."""
        task = asyncio.current_task()
        execution.task = task
        self.live[execution.id] = execution
        self._idle.clear()
        try:
            await self._run(execution, inline=True)
        except asyncio.CancelledError:
            # Cancelled through `cancel` (or by the drain): the execution is settled as cancelled and the
            # caller answers that. Any other cancellation (the server stopping) is the caller's own.
            if execution.cancel_requested and task is not None and task.uncancel() == 0:
                return
            raise

    async def admit_waiting(
        self, workflow: str, input: Any, *, trigger: str, parent_id: str | None = None, lifecycle_events: bool = True,
        idempotency_key: str | None = None,
    ) -> Execution:
        """Like `admit`, but wait for room in the queue instead of refusing (back-pressure)."""
        return await self.admit(workflow, input, trigger=trigger, parent_id=parent_id, wait=True,
                                lifecycle_events=lifecycle_events, idempotency_key=idempotency_key)

    def _enter(self, execution: Execution, run_now: bool) -> None:
        self.live[execution.id] = execution
        self._idle.clear()
        if run_now:
            self._launch(execution)
        else:
            self.meters[execution.workflow].queued.inc()

    async def resume(self, record: ExecutionRecord) -> None:
        """Run an execution this replica claimed (recovered after a crash, or woken): completed steps are
        read back from their checkpoints, not run again."""
        execution = Execution.from_record(record)
        execution.status = ExecutionStatus.QUEUED
        workflow = self.workflows.get(record.workflow)
        problem = None if workflow else f"workflow '{record.workflow}' is not in the running config"
        if workflow is not None:
            execution.program = workflow
            steps = await self.recorder.store.load_steps(record.id)
            execution.checkpoints = {step.step_key: step for step in steps}
            problem = unknown_checkpoints(workflow, execution.checkpoints)
        if problem is not None:
            log.error("execution cannot resume", execution_id=record.id, workflow_type=record.workflow,
                      reason=problem)
            execution.settle(ExecutionStatus.ERROR, exc=WorkflowEngineError(problem, code="cannot_resume"))
            await self.recorder.finished(execution, durable=True)
            return
        log.info("resuming execution", execution_id=record.id, workflow_type=record.workflow,
                 checkpoints=len(execution.checkpoints))
        self._enter(execution, self.gates[record.workflow].adopt(execution))

    def _gate(self, workflow: str) -> Gate:
        gate = self.gates.get(workflow) if workflow in self.workflows else None
        if gate is None:
            raise UnknownWorkflowError(f"no workflow named '{workflow}'")
        return gate

    def _launch(self, execution: Execution) -> None:
        assert self._spawn is not None, "runtime.start() must run before executions are admitted"
        execution.task = self._spawn(self._run(execution), _task_name(execution))

    # -- running ---------------------------------------------------------------------------------------------

    async def _run(self, execution: Execution, inline: bool = False) -> None:
        assert self.services is not None
        if execution.cancel_requested:  # cancelled after it was launched, before its task first ran
            await self._settle_unstarted(execution)
            self._release(execution, None)
            return
        # The compiled workflow it was admitted with: a config applied meanwhile does not change running code.
        workflow = execution.program or self.workflows[execution.workflow]
        durable = workflow.defn.durable
        meters = self.meters[execution.workflow]
        execution.status = ExecutionStatus.RUNNING
        meters.active.inc()
        # Every line logged for the execution from here on carries these (its steps log through `self._log`).
        bind_log_context(execution_id=execution.id, workflow_type=execution.workflow)
        logger = self._log
        bus = self.services.bus
        ctx = StepContext(execution, self.services, logger, durable, direct=not execution.checkpoints
                          and not (execution.lifecycle_events
                                   and (bus.wants("step.started") or bus.wants("step.completed"))))
        scope: dict[str, Any] = {
            "input": execution.input, "steps": execution.steps, "env": self.services.env,
            "execution": {"id": execution.id, "workflow": execution.workflow, "attempt": execution.attempt},
        }
        started = time.perf_counter()
        status: ExecutionStatus | None = None
        try:
            if execution.started_at is None:
                execution.started_at = time.time()
                await self.recorder.started(execution, durable)
            if execution.lifecycle_events and bus.wants("workflow.started"):
                await self._lifecycle("workflow.started", execution)
            output = await self._body(workflow, ctx, scope)
            status = ExecutionStatus.SUCCESS
            execution.settle(status, output)
        except Parked as parked:
            wake_at = parked.wake_at
            if execution.deadline is not None:  # the workflow's timeout comes first: wake up to fail then
                wake_at = execution.deadline if wake_at is None else min(wake_at, execution.deadline)
            await self.recorder.park(execution, wake_at, parked.topic, parked.state)
            execution.set_response(Response(202, {"execution_id": execution.id, "status": "parked"},
                                            {"X-Execution-Id": execution.id}))
        except asyncio.CancelledError:
            if execution.cancel_requested or not durable:
                status = ExecutionStatus.CANCELLED
                execution.settle(status, exc=ExecutionCancelledError(f"execution {execution.id} was cancelled"))
            raise
        except Exception as exc:
            status = ExecutionStatus.ERROR  # also when its on_error steps are interrupted
            status = await self._failed(workflow, ctx, scope, exc)
        finally:
            await self._ended(execution, status, time.perf_counter() - started, durable)
        if status is not None:
            topic = "workflow.completed" if status is ExecutionStatus.SUCCESS else "workflow.failed"
            if not inline:
                await self._lifecycle(topic, execution)
            elif execution.lifecycle_events and bus.wants(topic):
                # The caller is waiting to answer; the event does not hold it up.
                assert self._spawn is not None
                self._spawn(self._lifecycle(topic, execution), f"lifecycle:{execution.workflow}:{execution.id}")

    async def _body(self, workflow: CompiledWorkflow, ctx: StepContext, scope: dict[str, Any]) -> Any:
        if workflow.timeout is None:
            return await run_nodes(workflow.steps, ctx, scope)
        execution = ctx.execution
        if execution.deadline is None:
            # The attempt's deadline: kept across parking (a sleep or wait_for checkpoint records it), so that
            # time parked counts; a new attempt (retry) gets a new one.
            recorded = [float(c.extra["workflow_deadline"]) for c in execution.checkpoints.values()
                        if c.attempt == execution.attempt and "workflow_deadline" in c.extra]
            execution.deadline = max(recorded) if recorded else time.time() + workflow.timeout
        timed_out = WorkflowTimeoutError(f"workflow '{workflow.name}' timed out after {workflow.timeout:g}s")
        remaining = execution.deadline - time.time()
        if remaining <= 0:
            raise timed_out
        try:
            async with asyncio.timeout(remaining):
                return await run_nodes(workflow.steps, ctx, scope)
        except TimeoutError as exc:
            raise timed_out from exc

    async def _failed(self, workflow: CompiledWorkflow, ctx: StepContext, scope: dict[str, Any],
                      exc: Exception) -> ExecutionStatus:
        """Settle an execution whose steps raised `exc`, after its `on_error` steps; returns its status."""
        execution = ctx.execution
        if isinstance(exc, KeyTakenError) and execution.unrecorded:
            # Its first write found its key taken: another execution has its message. It stops here, unrecorded
            # and cancelled (not failed: no `on_error`, no error counted); its caller settles the message by
            # the other one.
            ctx.log.warning("execution end not recorded: another execution has its idempotency key")
            execution.end_error = exc
            execution.settle(ExecutionStatus.CANCELLED, exc=exc)
            return ExecutionStatus.CANCELLED
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
        execution.settle(ExecutionStatus.ERROR, exc=exc)
        return ExecutionStatus.ERROR

    async def _ended(self, execution: Execution, status: ExecutionStatus | None, seconds: float,
                     durable: bool) -> None:
        """Free the slot, record the end (persist, then tell the callers), update the meters.

        An execution that finished frees its slot before its end is committed: its steps are done, and the
        next one runs meanwhile (the commit, shared with the other executions that ended, is not held by
        slots waiting for it; `durable: false` ends are queued for their writer the same way).
        `status` None: the execution left this replica unfinished (parked, or interrupted by shutdown) and
        stays in the store for whoever takes it next; its slot is freed once that is recorded.
        """
        meters = self.meters[execution.workflow]
        if status is not None:
            meters.active.dec()
            self._release(execution, seconds)
        try:
            if status is not None:
                await self.recorder.finished(execution, durable)
            elif execution.status is not ExecutionStatus.PARKED:
                await self.recorder.release(execution)
                _interrupted(execution)
        except Exception as exc:  # the store failed: say so loudly; the lease lets another replica finish it
            execution.end_error = exc
            log.error("execution end not recorded", execution_id=execution.id, workflow_type=execution.workflow,
                      error=exc)
        finally:
            # Counted, answered and forgotten together, once the store has it.
            if status is not None:
                meters.finished[status.value].inc()
                meters.duration.observe(seconds)
                execution.resolve()
                self._forget(execution)
            else:
                meters.active.dec()
                self._drop(execution)
                self._release(execution, seconds)

    def _release(self, execution: Execution, seconds: float | None) -> None:
        """Free the execution's slot; the next queued execution takes it. `seconds` None: it never ran."""
        gate = self.gates[execution.workflow]
        nxt = gate.release(gate.recent_seconds if seconds is None else seconds)
        if nxt is not None:
            self.meters[execution.workflow].queued.dec()
            self._launch(nxt)

    def _drop(self, execution: Execution) -> None:
        """The execution left this replica unfinished."""
        self.live.pop(execution.id, None)
        if execution.responded is not None and not execution.responded.done():
            execution.responded.set_result(None)
        if not self.live:
            self._idle.set()

    def _forget(self, execution: Execution) -> None:
        self.live.pop(execution.id, None)
        self.recent[execution.id] = execution
        if len(self.recent) > RECENT_EXECUTIONS:
            self.recent.popitem(last=False)
        self._whole.append(execution)
        if len(self._whole) > RECENT_WHOLE:
            self._whole.popleft().slim()
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

    async def cancel(self, execution_id: str) -> Execution:
        """Cancel a queued, running or parked execution; finished ones are returned unchanged."""
        execution = self.get(execution_id)
        if execution is None:
            record = await self.recorder.store.get_execution(execution_id)
            if record is None:
                raise WorkflowEngineError(f"no execution '{execution_id}'", code="not_found", http_status=404)
            execution = Execution.from_record(record)
            if not execution.finished:
                await self._cancel_elsewhere(record, execution)
            return execution
        if execution.finished:
            return execution
        execution.cancel_requested = True
        if execution.task is None:  # waiting in the queue
            if self.gates[execution.workflow].remove_queued(execution):
                self.meters[execution.workflow].queued.dec()
            await self._settle_unstarted(execution)
        elif execution.status is ExecutionStatus.RUNNING:
            execution.task.cancel(f"execution {execution_id} cancelled")
        # else launched but not yet running: a task cancelled before its first step never enters `_run`, which
        # would leave the slot taken and `done` unresolved; `_run` sees `cancel_requested` and settles it instead.
        return execution

    async def _cancel_elsewhere(self, record: ExecutionRecord, execution: Execution) -> None:
        """Cancel an execution this replica does not run: take it first (parked, or its owner is gone), so
        that a replica running it cannot finish it over the cancellation."""
        if not await self.recorder.take(record):
            raise WorkflowEngineError(
                f"execution {record.id} is running on replica '{record.owner}'; cancel it through that replica "
                "(or again once its lease expires)", code="conflict", http_status=409)
        execution.settle(ExecutionStatus.CANCELLED,
                         exc=ExecutionCancelledError(f"execution {execution.id} was cancelled"))
        await self.recorder.finished(execution, durable=True)
        execution.resolve()

    async def end_recorded(self, execution: Execution) -> BaseException | None:
        """Once `execution` finished: wait until its end is in the store (an end recorded only at the end is
        written after the execution finished), then None, or why it is not (`end_error`; KeyTakenError: another
        execution has its idempotency key)."""
        written = execution.end_written  # kept: a duplicate's handler may wait for the same end
        if written is not None and execution.end_error is None:
            try:
                await written
            except KeyTakenError as exc:  # a duplicate delivery: the caller finds the execution that has the key
                execution.end_error = exc
                log.warning("execution end not recorded: another execution has its idempotency key",
                            execution_id=execution.id, workflow_type=execution.workflow)
            except Exception as exc:  # the store failed
                execution.end_error = exc
                log.error("execution end not recorded", execution_id=execution.id,
                          workflow_type=execution.workflow, error=exc)
        return execution.end_error

    async def wait_finished(self, execution: Execution) -> Execution:
        """Wait until `execution` finished, here or on another replica (then by polling the store)."""
        if execution.finished:
            return execution
        if self.get(execution.id) is execution:
            await asyncio.shield(execution.done)
            return execution
        while True:
            await asyncio.sleep(self.poll_interval)
            record = await self.recorder.store.get_execution(execution.id)
            if record is None:
                return execution
            if record.status in FINISHED:
                return Execution.from_record(record)

    async def retry(self, execution_id: str) -> Execution:
        """Run a failed or cancelled execution again from its failed step (completed steps are kept)."""
        record = await self.recorder.store.get_execution(execution_id)
        if record is None:
            raise WorkflowEngineError(f"no execution '{execution_id}'", code="not_found", http_status=404)
        if record.status not in (ExecutionStatus.ERROR, ExecutionStatus.CANCELLED):
            raise WorkflowEngineError(f"execution {execution_id} is {record.status}; only failed or cancelled "
                                      "executions can be retried", code="conflict", http_status=409)
        claimed = await self.recorder.claim_for_retry(record)
        if not claimed:
            raise WorkflowEngineError(f"execution {execution_id} is being retried already", code="conflict",
                                      http_status=409)
        record.attempt += 1
        # The next attempt runs without the previous end: `resume` would take a finished record's `done` as
        # resolved and its error as still current; the store keeps the attempt and forgets the old error too.
        record.status, record.output, record.error, record.finished_at = ExecutionStatus.RUNNING, None, None, None
        await self.recorder.store.update_execution(execution_id, attempt=record.attempt, output=None, error=None,
                                                   finished_at=None)
        self.recent.pop(execution_id, None)
        await self.resume(record)
        return self.get(execution_id) or Execution.from_record(record)

    async def _settle_unstarted(self, execution: Execution) -> None:
        execution.settle(ExecutionStatus.CANCELLED,
                         exc=ExecutionCancelledError(f"execution {execution.id} was cancelled"))
        self.meters[execution.workflow].finished["cancelled"].inc()
        try:
            await self.recorder.finished(execution, self.workflows[execution.workflow].defn.durable)
        finally:
            execution.resolve()
            self._forget(execution)

    async def drain(self, grace: float) -> None:
        """Stop intake, let running and queued executions finish within `grace`, then interrupt the rest by
        name: durable ones stay in the store for the next replica; the others are cancelled."""
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
                if self.workflows[execution.workflow].defn.durable:
                    await self.recorder.release(execution)
                    _interrupted(execution)
                    self._drop(execution)
                else:
                    await self._settle_unstarted(execution)
        running = [e for e in self.live.values() if e.task is not None]
        for execution in running:
            log.warning("interrupting execution still running after shutdown grace", execution_id=execution.id,
                        workflow_type=execution.workflow, task=_task_name(execution),
                        durable=self.workflows[execution.workflow].defn.durable)
            if execution.task is not None and execution.status is ExecutionStatus.RUNNING:
                if execution.program is not None and not execution.program.defn.durable:
                    execution.cancel_requested = True  # it ends cancelled (an inline one answers its caller so)
                execution.task.cancel("shutdown grace period expired")
        tasks = [e.task for e in running if e.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)


def _task_name(execution: Execution) -> str:
    """How logs name the task running `execution` (its own, or the caller's when it runs inline)."""
    return f"execution:{execution.workflow}:{execution.id}"


def _interrupted(execution: Execution) -> None:
    """Tell an HTTP caller waiting for `execution` that this replica stopped before it finished."""
    execution.set_response(Response(503, {"error": {
        "code": "interrupted", "message": "the engine stopped; the execution resumes on restart or on another "
        "replica"}, "execution_id": execution.id}, {"X-Execution-Id": execution.id, "Retry-After": "5"}))
