"""Writes an execution's life to the store: recorded before it starts, each step before the next, its end.

Workflows with `durable: false` keep only a summary row, written by a background writer after they finish. A
keyed `durable: false` execution whose key is presumed new (`Execution.key_presumed_new`: a message's first
delivery) is not written before it runs either: its summary row carries the key and the input, and its
`end_written` future resolves once the writer has committed it (a taken key: `KeyTakenError`).

A durable execution whose key is presumed new (`Execution.unrecorded`) is not written before it runs: the
broker keeps its message until its end is recorded, so a crash before its first write loses nothing (the
message is delivered again and runs anew, as it would from a row with no checkpoints). Its first write inserts
the row with the checkpoints so far: a step's checkpoint (the row `running`, through the group commit),
parking, or its end (the row whole with its checkpoints, through the summary writer as a `durable: false` end,
`end_written` likewise). A taken key then writes nothing: `KeyTakenError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import structlog

from workflow_engine.runtime.execution import Execution, ExecutionStatus, Response, recorded_input
from workflow_engine.store.base import Store, StoreError
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord

log = structlog.get_logger("workflow_engine.recorder")

SUMMARY_BUFFER = 10_000
SUMMARY_BATCH = 500
# How long the writer lets summary rows gather after the first one: a transaction's fixed cost (SQLAlchemy's
# Python per statement and per commit, on the store's thread, holding the GIL the event loop needs) is paid
# once for many rows. The rows are best effort by the user's choice (`durable: false`); this only delays them.
SUMMARY_LINGER = 0.05
# Step key of the recorded answer of a keyed `durable: false` execution (not a template identifier).
ANSWER_KEY = "$answer"


# A summary writer's entry: (execution id, its `summary_row`, the future of a caller waiting for it or None,
# its checkpoints as `step_row`s).
_Entry = tuple[str, Any, "asyncio.Future[None] | None", list[Any]]


class KeyTakenError(StoreError):
    """The first write of an execution not written before it ran (its end, or a durable one's first checkpoint)
    was not written: another execution of its workflow has its idempotency key (a message delivered twice,
    both deliveries run)."""

    code = "idempotency_key_taken"
    http_status = 409


class Recorder:
    """The runtime's only way to the store."""

    def __init__(self, store: Store, owner: str, lease: float) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease
        self.config_version: int | None = None
        # (execution id, the store's `summary_row`, the future of an end that waits for it or None, its
        # checkpoints as `step_row`s) of finished `durable: false` executions (and durable ones first written
        # at their end), for the writer. A deque and two events rather than an asyncio.Queue: its
        # put_nowait is a Python call chain per row.
        self._summaries: deque[_Entry] = deque()
        self._waited = 0  # queued rows whose execution waits for them: the writer does not let rows gather
        self._hurry = asyncio.Event()  # such a row came while the writer let rows gather: write now
        self._queued = asyncio.Event()  # rows are waiting for the writer
        self._room = asyncio.Event()  # the buffer has room again (set by the writer as it takes rows)
        # Summary rows queued or being written, by execution id: the runtime may have let the execution go.
        self._unwritten: dict[str, Any] = {}

    def _record(self, execution: Execution, status: Status, durable: bool) -> ExecutionRecord:
        now = time.time()
        return ExecutionRecord(
            id=execution.id, workflow=execution.workflow, trigger=execution.trigger,
            input=recorded_input(execution.input),
            status=status, config_version=execution.config_version, attempt=execution.attempt,
            created_at=execution.created_at, started_at=execution.started_at, updated_at=now,
            owner=self.owner if status not in (Status.SUCCESS, Status.ERROR, Status.CANCELLED) else None,
            lease_expires_at=now + self.lease, idempotency_key=execution.idempotency_key,
            parent_id=execution.parent_id, durable=durable,
        )

    async def create(self, execution: Execution, *, running: bool, durable: bool) -> ExecutionRecord | None:
        """Record a new execution; returns the existing record when its idempotency key was used before."""
        execution.config_version = self.config_version
        if not durable and (execution.idempotency_key is None or execution.key_presumed_new):
            return None  # its summary row is written when it finishes
        if running:
            execution.started_at = execution.created_at
            if execution.key_presumed_new and execution.idempotency_key is not None:
                execution.unrecorded = True  # its first write inserts the row
                return None
        record, created = await self.store.create_execution(
            self._record(execution, Status.RUNNING if running else Status.QUEUED, durable))
        return None if created else record

    async def started(self, execution: Execution, durable: bool) -> None:
        """A queued (or recovered) execution begins to run here."""
        if durable and not execution.unrecorded:
            await self.store.update_execution(
                execution.id, status=Status.RUNNING, started_at=execution.started_at, owner=self.owner,
                lease_expires_at=time.time() + self.lease)

    def defer_step(self, execution: Execution, key: str, status: str, output: Any, started_at: float) -> None:
        """`step(..., defer=True)` of a replayable step that ran as a plain call: its checkpoint goes with the
        execution's next write."""
        record = StepRecord(execution.id, key, status, execution.attempt, output, None, started_at, time.time(), {})
        execution.unsaved.append(record)
        execution.checkpoints[key] = record

    async def step(self, execution: Execution, key: str, status: str, output: Any, error: dict[str, Any] | None,
                   *, started_at: float, extra: dict[str, Any] | None = None, defer: bool = False) -> StepRecord:
        """Checkpoint one step result (the caller decides whether the workflow is durable). `defer`: a
        replayable step's result, written with the execution's next write instead of now."""
        if status in ("sleeping", "waiting") and execution.deadline is not None:
            extra = {**(extra or {}), "workflow_deadline": execution.deadline}  # read back on resume
        record = StepRecord(execution.id, key, status, execution.attempt, output, error, started_at, time.time(),
                            extra or {})
        if defer:
            execution.unsaved.append(record)
        else:
            unsaved = _take_unsaved(execution)
            try:
                if execution.unrecorded:
                    await self._first_write(execution, self._record(execution, Status.RUNNING, True),
                                            [*unsaved, record])
                elif unsaved:
                    await self.store.save_steps([*unsaved, record])
                else:
                    await self.store.save_step(record)
            except BaseException:
                execution.unsaved[:0] = unsaved  # not written: they go with the next write
                raise
        execution.checkpoints[key] = record
        return record

    async def finished(self, execution: Execution, durable: bool) -> None:
        """Record the end: at once for durable workflows, through the summary writer otherwise (and for a
        durable execution with no row yet, whose end is its first write)."""
        finished_at = execution.finished_at or time.time()
        keyed = execution.idempotency_key is not None
        steps: list[Any] = []
        if durable and execution.unrecorded:
            if isinstance(execution.end_error, KeyTakenError):
                return  # its first checkpoint found its key taken: nothing of it is written
            # Its whole row and its checkpoints, as a summary row is written: one multi-row insert per batch
            # (the group commit binds every statement of every write on the loop; this costs a fraction).
            try:
                steps = [self.store.step_row(step) for step in _take_unsaved(execution)]
            except TypeError as exc:  # an output that is not JSON data: the end is not recorded
                raise StoreError(f"execution {execution.id} not recorded: {exc}") from exc
        elif durable or (keyed and not execution.key_presumed_new):
            unsaved = _take_unsaved(execution)
            # A repeated Idempotency-Key gets the first answer back, from any replica, after any restart: a
            # `durable: false` execution has no `respond` checkpoint to give it, so its answer is recorded.
            answer = [] if durable else self._answer(execution, finished_at)
            try:
                await self.store.finish_execution(execution.id, execution.status, execution.output,
                                                  _recorded_error(execution), finished_at,
                                                  steps=[*unsaved, *answer])
            except BaseException:
                execution.unsaved[:0] = unsaved
                raise
            return
        # A summary: what ran, when, and how it ended, as the store's own row (built now: the output is not
        # held for the writer). Input (request headers and bodies) would make it the largest cost of a
        # `durable: false` request; it is kept only by durable workflows and keyed rows (the next attempt of a
        # failed message execution runs on it).
        now = time.time()
        try:
            row = self.store.summary_row(
                execution.id, workflow=execution.workflow, trigger=execution.trigger, status=execution.status,
                config_version=execution.config_version, output=execution.output,
                error=_recorded_error(execution) if durable else execution.error,
                attempt=execution.attempt, created_at=execution.created_at, started_at=execution.started_at,
                finished_at=finished_at, updated_at=finished_at if durable else now,
                lease_expires_at=None if durable else now + self.lease, parent_id=execution.parent_id,
                input=recorded_input(execution.input) if keyed or durable else None,
                idempotency_key=execution.idempotency_key, durable=durable)
        except TypeError as exc:  # an output that is not JSON data (a component's set, say): only it is lost
            log.error("summary row not written", execution_id=execution.id, workflow_type=execution.workflow,
                      error=exc)
            if keyed or durable:
                raise StoreError(f"execution {execution.id} not recorded: {exc}") from exc
            return
        self._unwritten[execution.id] = row
        while len(self._summaries) >= SUMMARY_BUFFER:  # the writer is behind: wait for room (back-pressure)
            self._room.clear()
            try:
                await self._room.wait()
            except BaseException:
                del self._unwritten[execution.id]
                raise
        if not keyed:
            self._summaries.append((execution.id, row, None, steps))
            self._queued.set()
            return
        # Its end is recorded once the row is committed: its caller waits for that (and acks a message then),
        # not the execution's own code path, which would be suspended and resumed through every frame.
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        execution.end_written = written
        self._summaries.append((execution.id, row, written, steps))
        self._waited += 1
        self._queued.set()
        self._hurry.set()

    async def _first_write(self, execution: Execution, record: ExecutionRecord, steps: list[StepRecord]) -> None:
        """Insert the row of an `unrecorded` execution with its checkpoints so far."""
        found, created = await self.store.create_execution(record, steps=steps)
        if not created:
            raise KeyTakenError(f"execution {execution.id} not recorded: execution {found.id} has its "
                                "idempotency key")
        execution.unrecorded = False

    @staticmethod
    def _answer(execution: Execution, at: float) -> list[StepRecord]:
        response = execution.response
        if response is None:
            return []
        return [StepRecord(execution.id, ANSWER_KEY, "success", execution.attempt, response.body, None, at, at,
                           {"status": response.status, "headers": response.headers})]

    async def park(self, execution: Execution, wake_at: float | None, topic: str | None,
                   state: dict[str, Any] | None) -> None:
        """The execution waits (sleep, wait_for) holding nothing here."""
        unsaved = _take_unsaved(execution)
        try:
            if execution.unrecorded:
                await self._first_write(execution, self._record(execution, Status.RUNNING, True), unsaved)
                unsaved = []
            await self.store.park(execution.id, wake_at, topic, state, steps=unsaved)
        except BaseException:
            execution.unsaved[:0] = unsaved
            raise
        execution.status = ExecutionStatus.PARKED

    async def release(self, execution: Execution) -> None:
        """This replica stops before finishing `execution`: let any replica take it at once (one with no row
        yet is its message's again, delivered anew)."""
        if execution.unrecorded:
            return
        await self.store.update_execution(execution.id, owner=None, lease_expires_at=time.time())

    async def claim_for_retry(self, record: ExecutionRecord) -> bool:
        """Take a failed or cancelled execution back to run it again."""
        return await self.store.claim_one(record.id, self.owner, time.time() + self.lease, expect=record.status)

    async def recorded_response(self, execution_id: str) -> Response | None:
        """The answer a `respond` step of the execution gave, read back from its checkpoints."""
        for step in await self.store.load_steps(execution_id):
            if "status" in step.extra and "headers" in step.extra:
                return Response(step.extra["status"], step.output, step.extra["headers"])
        return None

    async def take(self, record: ExecutionRecord) -> bool:
        """Own an execution nobody runs: parked, or queued/running with an expired lease."""
        now = time.time()
        if record.status not in (Status.PARKED, Status.QUEUED, Status.RUNNING):
            return False
        if record.status is not Status.PARKED and (record.lease_expires_at or 0) > now and record.owner:
            return False
        return await self.store.claim_one(record.id, self.owner, now + self.lease, expect=record.status)

    async def claim(self, limit: int) -> list[ExecutionRecord]:
        """Executions nobody holds (expired leases, due timers), now owned here."""
        now = time.time()
        return await self.store.claim(self.owner, now + self.lease, now, limit)

    async def heartbeat(self, execution_ids: list[str]) -> int:
        """Extend this replica's leases."""
        return await self.store.heartbeat(self.owner, execution_ids, time.time() + self.lease)

    def unwritten(self, execution_id: str) -> ExecutionRecord | None:
        """The summary row of a finished `durable: false` execution that is not in the store yet (queued or
        being written)."""
        row = self._unwritten.get(execution_id)
        return None if row is None else self.store.summary_record(row)

    def summaries_queued(self) -> int:
        """Summary rows waiting for the writer (not counting a batch being written)."""
        return len(self._summaries)

    async def write_summaries(self) -> None:
        """Background writer of `durable: false` summary rows; runs until cancelled, then flushes."""
        task = asyncio.current_task()
        try:
            while True:
                if task is not None and task.cancelling():
                    # Asked to stop while writing, and the cancellation was swallowed on the way (Python
                    # 3.11's wait_for does when its inner await finishes at the same moment, as the helper
                    # process's answer can): stop now rather than wait for rows that will never come.
                    raise asyncio.CancelledError
                if not self._summaries:
                    self._queued.clear()
                    await self._queued.wait()
                if len(self._summaries) < SUMMARY_BATCH and not self._waited:
                    # Let rows gather, unless a row someone waits for (a message's ack) comes meanwhile.
                    # Cancelled (stopping): the rows are flushed below.
                    self._hurry.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SUMMARY_LINGER):
                            await self._hurry.wait()
                await self._write_summaries([])
        finally:
            try:
                await self._write_summaries([])
            finally:
                self._fail_waiting(StoreError("the summary writer stopped before the execution's end was written"))

    async def _write_summaries(self, batch: list[_Entry]) -> None:
        """Write `batch` plus whatever else is queued, up to SUMMARY_BATCH rows per transaction: one commit
        for many rows is what keeps `durable: false` cheap under load."""
        queued = self._summaries
        while True:
            while len(batch) < SUMMARY_BATCH and queued:
                entry = queued.popleft()
                if entry[2] is not None:
                    self._waited -= 1
                batch.append(entry)
            self._room.set()
            if not batch:
                return
            try:
                await self._insert(batch)
            finally:
                for execution_id, _, written, _ in batch:
                    self._unwritten.pop(execution_id, None)
                    if written is not None and not written.done():  # the batch was interrupted (stopping)
                        _fail(written, StoreError(f"execution {execution_id}: its end was not written"))
            if not queued:
                return
            batch = []

    async def _insert(self, batch: list[_Entry]) -> None:
        try:
            taken = await self.store.create_summaries([row for _, row, _, _ in batch],
                                                      [step for *_, steps in batch for step in steps])
        except Exception as exc:  # supervision boundary: a summary row is best effort by the user's choice
            if len(batch) == 1:
                execution_id, _, written, _ = batch[0]
                log.error("summary row not written", execution_id=execution_id, error=exc)
                if written is not None and not written.done():
                    _fail(written, exc)
                return
            # One row the store refuses must not take the others along.
            log.warning("summary rows refused as a batch; writing them one by one", count=len(batch), error=exc)
            for entry in batch:
                await self._insert([entry])
            return
        for execution_id, _, written, _ in batch:
            if written is None or written.done():
                continue
            if execution_id in taken:
                _fail(written, KeyTakenError(
                    f"execution {execution_id} not recorded: another execution has its idempotency key"))
            else:
                written.set_result(None)

    def _fail_waiting(self, exc: BaseException) -> None:
        """Executions still waiting for rows that will not be written now are told so (never left waiting)."""
        for _, _, written, _ in self._summaries:
            if written is not None and not written.done():
                _fail(written, exc)


def _fail(written: asyncio.Future[None], exc: BaseException) -> None:
    """Resolve an `end_written` future with `exc`; a caller gone meanwhile (shutdown) never reads it, and that
    is not worth asyncio's "exception was never retrieved" at collection."""
    written.set_exception(exc)
    written.exception()


def _take_unsaved(execution: Execution) -> list[StepRecord]:
    """The deferred checkpoints of `execution`, which the caller writes (or puts back when it cannot)."""
    unsaved = execution.unsaved
    if unsaved:
        execution.unsaved = []
    return unsaved


def _recorded_error(execution: Execution) -> dict[str, Any] | None:
    """The error as stored: with the 4xx status an HTTP caller got (`http_status`), so that a repeated
    Idempotency-Key answered from the store gets the same status."""
    error, exc = execution.error, execution.exception
    status = getattr(exc, "http_status", None)
    if error is None or not isinstance(status, int) or not 400 <= status < 500:
        return error
    return {**error, "http_status": status}
