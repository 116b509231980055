"""One execution of a workflow: identity, state, result, and the futures its callers wait on."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from workflow_engine.errors import WorkflowEngineError
from workflow_engine.store.records import FINISHED, ExecutionRecord, Status, StepRecord

# One status vocabulary for the runtime and the store.
ExecutionStatus = Status


@dataclass(slots=True)
class Response:
    """What a `respond` step (or the workflow's output) answers an HTTP caller."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Execution:
    """A workflow execution. `done` resolves when it finishes; `responded` when a response is known."""

    __slots__ = (
        "attempt",
        "cancel_requested",
        "checkpoints",
        "config_version",
        "created_at",
        "deadline",
        "depth",
        "done",
        "end_error",
        "end_written",
        "error",
        "exception",
        "finished_at",
        "id",
        "idempotency_key",
        "input",
        "key_presumed_new",
        "lifecycle_events",
        "output",
        "parent_id",
        "program",
        "responded",
        "response",
        "started_at",
        "status",
        "steps",
        "task",
        "trigger",
        "unrecorded",
        "unsaved",
        "workflow",
    )

    def __init__(self, id: str, workflow: str, input: Any, trigger: str, parent_id: str | None = None) -> None:
        self.id = id
        self.workflow = workflow
        self.input = input
        self.trigger = trigger
        self.parent_id = parent_id
        self.status = ExecutionStatus.QUEUED
        self.attempt = 1
        self.output: Any = None
        self.error: dict[str, Any] | None = None
        self.exception: BaseException | None = None
        self.response: Response | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.lifecycle_events = True
        self.steps: dict[str, dict[str, Any]] = {}
        self.checkpoints: dict[str, StepRecord] = {}
        # Checkpoints of replayable steps not written yet: they go with the execution's next write.
        self.unsaved: list[StepRecord] = []
        # Wall-clock deadline of this attempt under the workflow's `timeout` (None: no timeout, or not started).
        self.deadline: float | None = None
        # How deep under other executions through `workflow` steps (0: started by a trigger; in this process).
        self.depth = 0
        self.config_version: int | None = None
        self.idempotency_key: str | None = None
        # The caller presumes no execution has the key yet (a message's first delivery): a `durable: false`
        # execution is then recorded only at its end, its row carrying the key (see Recorder).
        self.key_presumed_new = False
        # A durable execution with a presumed-new key has no row until its first write, which inserts it with
        # the checkpoints so far (or whole, at its end): one commit fewer per message (see Recorder).
        self.unrecorded = False
        # Why recording its end failed (None: recorded, or not finished yet); a message is then not acked.
        self.end_error: BaseException | None = None
        # An end recorded only at the end (`key_presumed_new`): resolved once its row is committed. The execution
        # is finished before that; its caller waits for this (`Runtime.end_recorded`) before it acts on the end.
        self.end_written: asyncio.Future[None] | None = None
        self.program: Any = None  # the CompiledWorkflow it runs (kept across a config apply)
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.responded: asyncio.Future[None] | None = None

    @classmethod
    def from_record(cls, record: ExecutionRecord) -> Execution:
        """An execution as the store knows it (one not running here, or to resume here)."""
        execution = cls(record.id, record.workflow, record.input, record.trigger, record.parent_id)
        execution.status = record.status
        execution.attempt = record.attempt
        execution.output = record.output
        execution.error = record.error
        execution.created_at = record.created_at
        execution.started_at = record.started_at
        execution.finished_at = record.finished_at
        execution.config_version = record.config_version
        execution.idempotency_key = record.idempotency_key
        if record.status in FINISHED:
            execution.done.set_result(None)
        return execution

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def slim(self) -> None:
        """Drop what a finished execution no longer needs and may be large (input, step outputs, checkpoints, the
        frames of its exception's traceback): its summary and its answer (`response`, the exception itself, for
        a repeated Idempotency-Key) stay."""
        if not self.finished:
            return
        self.input = None
        self.steps = {}
        self.checkpoints = {}
        self.unsaved = []
        if self.exception is not None:
            self.exception.__traceback__ = None
        self.task = None
        self.program = None

    def set_response(self, response: Response) -> None:
        """Record the response once; later `respond` steps do not change what the caller got."""
        if self.response is None:
            self.response = response
            if self.responded is not None and not self.responded.done():
                self.responded.set_result(None)

    async def wait_response(self) -> None:
        """Wait until a `respond` step ran or the execution finished."""
        if self.response is not None or self.finished:
            return
        # One waiter (the HTTP request that started it). A waiter that was cancelled (client gone) leaves a
        # cancelled future behind, which `set_response`/`resolve` skip; a later waiter gets a fresh one.
        # (Cheaper than shielding a shared future: no extra future and callbacks per request.)
        if self.responded is None or self.responded.cancelled():
            self.responded = asyncio.get_running_loop().create_future()
        await self.responded

    def finish(self, status: ExecutionStatus, output: Any = None, exc: BaseException | None = None) -> None:
        """Set the result and wake everyone waiting for it."""
        self.settle(status, output, exc)
        self.resolve()

    def settle(self, status: ExecutionStatus, output: Any = None, exc: BaseException | None = None) -> None:
        """Set the result (recorded in the store before `resolve` tells the callers)."""
        self.status = status
        self.output = output
        self.finished_at = time.time()
        if exc is not None:
            self.exception = exc
            self.error = error_dict(exc)

    def resolve(self) -> None:
        """Wake the callers waiting for the result or a response."""
        if not self.done.done():
            self.done.set_result(None)
        if self.responded is not None and not self.responded.done():
            self.responded.set_result(None)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view of the execution."""
        return {
            "id": self.id, "workflow": self.workflow, "status": str(self.status), "trigger": self.trigger,
            "attempt": self.attempt, "input": recorded_input(self.input), "output": self.output, "error": self.error,
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "parent_id": self.parent_id,
        }


# Request headers that carry credentials: kept from an execution's input where it is stored or shown (the
# store, the API); the running steps still see them (a workflow may pass a token on).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
REDACTED = "[redacted]"


def recorded_input(value: Any) -> Any:
    """An execution's input as the store and the API keep it: an HTTP request's credential headers redacted."""
    if type(value) is not dict:
        return value
    headers = value.get("headers")
    if type(headers) is not dict or headers.keys().isdisjoint(CREDENTIAL_HEADERS):
        return value
    return {**value, "headers": {k: REDACTED if k in CREDENTIAL_HEADERS else v for k, v in headers.items()}}


def error_dict(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an error: stable code, message, and the step when known."""
    if isinstance(exc, WorkflowEngineError):
        return exc.to_dict()
    if isinstance(exc, asyncio.CancelledError):
        return {"code": "cancelled", "message": "execution was cancelled"}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
