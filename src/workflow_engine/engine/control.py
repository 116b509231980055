"""What operators can see and do in a running engine; the management API's routes call this and nothing else."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from workflow_engine import __version__
from workflow_engine.api.config import ApiConfig
from workflow_engine.config.issues import Issue
from workflow_engine.config.models import StepDef
from workflow_engine.config.schema import app_json_schema
from workflow_engine.config.validate import load_config_text
from workflow_engine.errors import ConfigError, DrainingError, UnknownWorkflowError, WorkflowEngineError
from workflow_engine.modules.eventbus.memory import Event, EventBus, Subscription
from workflow_engine.runtime.execution import Execution
from workflow_engine.runtime.program import CompiledWorkflow, load_program
from workflow_engine.store.records import ExecutionRecord, Status, StepRecord

if TYPE_CHECKING:
    from workflow_engine.engine.engine import Engine

Json = dict[str, Any]

# Execution ids are UUIDv7 strings; anything far from that shape is unknown without asking the store.
_ID_SHAPE = re.compile(r"^[0-9A-Za-z_.:-]{1,128}$")
# How long cancel waits for a running execution to unwind, so the answer shows it cancelled.
CANCEL_SETTLE = 5.0
EVENT_TOPICS = ("workflow.", "step.")


class Control:
    """Status, workflows, executions, config and events of one engine, as JSON-ready values.

    Everything is read through the engine at call time, so an applied config (a new program and runtime) is
    what the next call sees.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started_at = time.time()
        self._catalog: Json | None = None
        self._schema: Json | None = None

    # -- status ----------------------------------------------------------------------------------------------

    def status(self) -> Json:
        """The app, versions, uptime, readiness and how many executions are live here."""
        ready, readiness = self.engine.health.readiness()
        return {
            "app": self.engine.app.name,
            "engine_version": __version__,
            "config_version": self.engine.runtime.recorder.config_version,
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "ready": ready,
            "readiness": readiness,
            "live_executions": len(self.engine.runtime.live),
        }

    # -- workflows -------------------------------------------------------------------------------------------

    def workflows(self) -> list[Json]:
        """Every workflow of the running config, by name."""
        counts = self._live_counts()
        return [self._workflow(wf, counts) for _, wf in sorted(self.engine.program.items())]

    def workflow(self, name: str) -> Json:
        """One workflow; UnknownWorkflowError (404) when the running config has none of that name."""
        return self._workflow(self._compiled(name), self._live_counts())

    def _compiled(self, name: str) -> CompiledWorkflow:
        workflow = self.engine.program.get(name)
        if workflow is None:
            raise UnknownWorkflowError(f"no workflow named '{name}'")
        return workflow

    def _live_counts(self) -> Counter[tuple[str, str]]:
        return Counter((e.workflow, str(e.status)) for e in self.engine.runtime.live.values())

    def _workflow(self, workflow: CompiledWorkflow, counts: Counter[tuple[str, str]]) -> Json:
        defn = workflow.defn
        trigger: Json = {"kind": "manual", "config": {}}
        if defn.trigger is not None:
            trigger = {"kind": defn.trigger.kind, "config": _dump(defn.trigger.config)}
        return {
            "name": workflow.name,
            "description": defn.description,
            "trigger": trigger,
            "steps": [_step(step) for step in defn.steps],
            "on_error": [_step(step) for step in defn.on_error],
            "concurrency": defn.concurrency,
            "queue_size": defn.queue_size,
            "timeout": defn.timeout,
            "durable": defn.durable,
            "running": counts[(workflow.name, Status.RUNNING.value)],
            "queued": counts[(workflow.name, Status.QUEUED.value)],
        }

    # -- executions ------------------------------------------------------------------------------------------

    async def start(self, workflow: str, input: Any, *, idempotency_key: str | None = None,
                    wait: float | None = None) -> tuple[Json, bool]:
        """Start `workflow` by hand; with `wait` seconds, wait (that long at most) for it to finish.

        Returns the execution and whether it has finished. A repeated `idempotency_key` returns the execution
        it started first. Refusals: UnknownWorkflowError, QueueFullError, DrainingError.
        """
        self._compiled(workflow)  # an unknown name must not become a metric label
        execution = await self.engine.runtime.admit(
            workflow, input, trigger="manual", idempotency_key=idempotency_key)
        if wait is not None and not execution.finished:
            await _wait_done(execution, wait)
        return _execution(execution), execution.finished

    async def executions(self, *, workflow: str | None = None, status: Status | None = None, limit: int = 50,
                         cursor: str | None = None) -> Json:
        """A page of executions from the store, newest first, and the cursor of the next page."""
        page = await self.engine.store.list_executions(workflow=workflow, status=status, limit=limit, cursor=cursor)
        return {"items": [_record(record) for record in page.items], "next_cursor": page.next_cursor}

    async def execution(self, execution_id: str) -> Json:
        """One execution with its step checkpoints; 404 when neither the runtime nor the store knows it."""
        if not _ID_SHAPE.match(execution_id):
            raise _not_found(execution_id)
        runtime = self.engine.runtime
        live = runtime.get(execution_id)
        record = await self.engine.store.get_execution(execution_id)
        if live is not None:
            summary = _execution(live)
        elif record is not None:
            summary = _record(record)
        elif (unwritten := runtime.recorder.unwritten(execution_id)) is not None:
            # `durable: false`, gone from memory, its summary row not written yet: no 404 in between.
            summary = _record(unwritten)
        else:
            raise _not_found(execution_id)
        if record is not None:
            # Who holds it: the runbook's "live owner or dead owner" question for a stuck execution.
            summary = {**summary, "owner": record.owner, "lease_expires_at": record.lease_expires_at}
            steps = [_checkpoint(step) for step in await self.engine.store.load_steps(execution_id)]
        else:  # `durable: false`: no checkpoints, only what the running execution holds
            steps = [{"step": key, **value} for key, value in live.steps.items()] if live is not None else []
        return {**summary, "steps": steps}

    async def cancel(self, execution_id: str) -> Json:
        """Cancel a queued, running or parked execution (a finished one is returned as it is)."""
        if not _ID_SHAPE.match(execution_id):
            raise _not_found(execution_id)
        execution = await self.engine.runtime.cancel(execution_id)
        if not execution.finished:
            await _wait_done(execution, CANCEL_SETTLE)
        return _execution(execution)

    async def retry(self, execution_id: str) -> Json:
        """Run a failed or cancelled execution again from its failed step; 409 for any other status."""
        if not _ID_SHAPE.match(execution_id):
            raise _not_found(execution_id)
        return _execution(await self.engine.runtime.retry(execution_id))

    # -- config, schema, types -------------------------------------------------------------------------------

    def config(self) -> Json:
        """The running config as written (variables unexpanded) and its version."""
        app = self.engine.app
        return {"file": app.source_file, "text": app.source_text,
                "version": self.engine.runtime.recorder.config_version}

    def config_file_name(self) -> str:
        """The running config's file name, used to locate the issues of a config under validation."""
        return Path(self.engine.app.source_file).name or "config.yaml"

    async def validate_config(self, text: str, file: str) -> list[Issue]:
        """Every issue of config `text` (validation and template compilation); empty when it is valid."""
        registry = self.engine.registry

        def check() -> list[Issue]:
            try:
                load_program(lambda: load_config_text(text, file, registry), registry)
            except ConfigError as err:
                return err.issues
            return []

        # Parsing and compiling a big config is CPU work; it must not stall executions on the loop.
        return await asyncio.to_thread(check)

    async def apply_config(self, text: str) -> Json:
        """Apply config `text` without restart; ConfigError (every issue) leaves the running app untouched."""
        version = await self.engine.apply_config(text)
        return {"applied": True, "version": version}

    def app_schema(self) -> Json:
        """The JSON Schema of the config file for this engine's types."""
        if self._schema is None:
            self._schema = app_json_schema(self.engine.registry)
        return self._schema

    def catalog(self) -> Json:
        """The registered module, step and trigger types with their summaries and config schemas."""
        if self._catalog is None:
            registry = self.engine.registry
            self._catalog = {
                "modules": [{"name": s.type, "kind": s.kind, "summary": s.summary,
                             "config_schema": s.config_model.model_json_schema()}
                            for s in sorted(registry.modules.values(), key=lambda s: s.type)],
                "steps": [{"name": s.name, "key": s.yaml_key, "summary": s.summary,
                           "config_schema": s.config_model.model_json_schema()}
                          for s in sorted(registry.steps.values(), key=lambda s: s.name)],
                "triggers": [{"name": s.name, "summary": s.summary,
                              "config_schema": s.config_model.model_json_schema()}
                             for s in sorted(registry.triggers.values(), key=lambda s: s.name)],
            }
        return self._catalog

    def api_access(self) -> tuple[ApiConfig, Path]:
        """The running config's API tokens and the directory `token_file` paths are relative to."""
        app = self.engine.app
        return app.engine.api, Path(app.source_file).parent if app.source_file else Path()

    # -- events ----------------------------------------------------------------------------------------------

    def check_streaming(self) -> None:
        """DrainingError (503) when the engine is shutting down: no new event streams then."""
        if self.engine.health.draining:
            raise DrainingError("engine is shutting down; no new event streams are accepted")

    def subscribe(self, *, buffer: int, workflow: str | None = None, execution_id: str | None = None) -> EventFeed:
        """A feed of execution and step lifecycle events; close it when the client goes away."""
        return EventFeed(self.engine.bus, buffer, workflow=workflow, execution_id=execution_id)

    @property
    def draining(self) -> bool:
        """Whether the engine is shutting down (event streams end)."""
        return self.engine.health.draining


class EventFeed:
    """One client's subscription to lifecycle events, with a bounded queue: a client that falls behind by a
    whole queue is cut off (`overflowed`) instead of making the engine buffer without bound."""

    def __init__(self, bus: EventBus, buffer: int, *, workflow: str | None = None,
                 execution_id: str | None = None) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=buffer)
        self.overflowed = False
        self._filters: Mapping[str, str] = {
            k: v for k, v in (("workflow", workflow), ("execution_id", execution_id)) if v is not None}
        self._bus = bus
        # `>` on one subscription keeps step and workflow events in the order they were published.
        self._subscription: Subscription | None = bus.subscribe(">", self._deliver, name="api-events")

    async def _deliver(self, event: Event) -> None:
        if self.overflowed or not event.topic.startswith(EVENT_TOPICS):
            return
        data = event.data
        if self._filters and not (
                isinstance(data, dict) and all(data.get(k) == v for k, v in self._filters.items())):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    async def next(self, within: float) -> Event | None:
        """The next event, or None when none arrived within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                return await self.queue.get()
        except TimeoutError:
            return None

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if self._subscription is not None:
            self._bus.unsubscribe(self._subscription)
            self._subscription = None


# -- JSON views --------------------------------------------------------------------------------------------------


def _dump(config: BaseModel) -> Json:
    # mode="json" renders SecretStr fields masked, so viewers never see secrets from the config.
    return config.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def _step(step: StepDef) -> Json:
    out: Json = {"id": step.id, "kind": step.kind}
    if step.children:
        out["children"] = {name: [_step(child) for child in steps] for name, steps in step.children.items()}
    return out


def _execution(execution: Execution) -> Json:
    return {**execution.summary(), "idempotency_key": execution.idempotency_key,
            "config_version": execution.config_version}


def _record(record: ExecutionRecord) -> Json:
    return {
        "id": record.id, "workflow": record.workflow, "status": str(record.status), "trigger": record.trigger,
        "attempt": record.attempt, "input": record.input, "output": record.output, "error": record.error,
        "created_at": record.created_at, "started_at": record.started_at, "finished_at": record.finished_at,
        "parent_id": record.parent_id, "idempotency_key": record.idempotency_key,
        "config_version": record.config_version,
    }


def _checkpoint(step: StepRecord) -> Json:
    return {"step": step.step_key, "status": step.status, "attempt": step.attempt, "output": step.output,
            "error": step.error, "started_at": step.started_at, "finished_at": step.finished_at,
            "extra": step.extra}


def _not_found(execution_id: str) -> WorkflowEngineError:
    return WorkflowEngineError(f"no execution '{execution_id}'", code="not_found", http_status=404)


async def _wait_done(execution: Execution, seconds: float) -> None:
    """Wait up to `seconds` for `execution` to finish; the waiter going away never cancels the execution."""
    try:
        async with asyncio.timeout(seconds):
            await asyncio.shield(execution.done)
    except TimeoutError:
        return
