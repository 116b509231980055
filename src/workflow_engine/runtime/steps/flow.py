"""Flow steps: `respond`, `log`, `fail`, `sleep`, `workflow` (sub-workflow) and `publish` (event bus)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import BrokerError, FailError, StepError
from workflow_engine.modules.broker.base import Broker
from workflow_engine.modules.eventbus.memory import validate_pattern
from workflow_engine.registry.specs import ModuleRef, StepSpec, TopicRef, WorkflowRef
from workflow_engine.runtime.execution import ExecutionStatus, Response
from workflow_engine.runtime.parking import Parked
from workflow_engine.runtime.step import Scope, Step, StepBuilder, StepContext, SyncStep, step_attempt, step_key
from workflow_engine.runtime.templates import header_values


class RespondConfig(Strict):
    status: int | str = Field(200, description="HTTP status (a number or a template).")
    body: Any = Field(None, description="Response body (templates allowed); JSON unless a string.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra response headers (templates allowed).")


class RespondStep(SyncStep):
    replayable = True  # its answer is the execution's own state; a resumed execution has no caller

    def __init__(self, config: RespondConfig, build: StepBuilder) -> None:
        self.status = build.compile(config.status, "respond.status")
        self.body = build.compile(config.body, "respond.body")
        self.headers = build.compile(config.headers, "respond.headers")

    def run_sync(self, ctx: StepContext, scope: Scope) -> Any:
        status = self.status.render(scope)
        try:
            code = int(status)
        except (TypeError, ValueError) as exc:
            raise StepError(f"respond status {status!r} is not a number", code="invalid_status") from exc
        if not 100 <= code <= 599:
            raise StepError(f"respond status {code} is not an HTTP status", code="invalid_status")
        body = self.body.render(scope)
        headers = header_values(self.headers.render(scope))
        ctx.execution.set_response(Response(code, body, headers))
        return body


class LogConfig(Strict):
    message: str = Field(description="The log event (template allowed).")
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    fields: dict[str, Any] = Field(default_factory=dict, description="Extra fields (templates allowed).")


# Fields the engine puts on log lines (DESIGN.md §2.5, plus the request id): operators search by them, so a
# `log` step may not overwrite them.
RESERVED_LOG_FIELDS = frozenset({"ts", "timestamp", "level", "logger", "event", "workflow_type", "execution_id",
                                 "step", "module", "error", "request_id"})


class LogStep(SyncStep):
    def __init__(self, config: LogConfig, build: StepBuilder) -> None:
        self.message = build.compile(config.message, "log.message")
        self.level = config.level
        for name in sorted(RESERVED_LOG_FIELDS.intersection(config.fields)):
            build.issue(f"log.fields.{name}", f"'{name}' is a field the engine sets on every log line; "
                        "choose another name")
        self.fields = build.compile(config.fields, "log.fields")

    def run_sync(self, ctx: StepContext, scope: Scope) -> Any:
        message = self.message.render(scope)
        fields = self.fields.render(scope)
        getattr(ctx.log, self.level)(str(message), **fields)
        return message


class FailConfig(Strict):
    message: str = Field(description="Why the workflow fails (template allowed).")
    code: str = Field("failed", pattern=r"^[a-z][a-z0-9_]*$", description="Stable error code for callers.")
    status: int | None = Field(None, ge=400, le=499, description="HTTP status for HTTP callers (4xx); default 500.")
    details: Any = Field(None, description="Extra error details (templates allowed).")


class FailStep(SyncStep):
    def __init__(self, config: FailConfig, build: StepBuilder) -> None:
        self.message = build.compile(config.message, "fail.message")
        self.details = build.compile(config.details, "fail.details")
        self.code = config.code
        self.status = config.status or 500

    def run_sync(self, ctx: StepContext, scope: Scope) -> Any:
        raise FailError(str(self.message.render(scope)), code=self.code, http_status=self.status,
                        details=self.details.render(scope))


class SleepConfig(Strict):
    duration: Duration = Field(description="How long to wait.")


class SleepStep(Step):
    def __init__(self, config: SleepConfig, build: StepBuilder) -> None:
        self.duration = config.duration

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        if not ctx.durable:
            await asyncio.sleep(self.duration)
            return {"slept": self.duration}
        # The wake-up time is fixed when the sleep first starts and survives restarts in its checkpoint.
        key = step_key.get()
        checkpoint = ctx.execution.checkpoints.get(key)
        if checkpoint is not None and checkpoint.status == "sleeping":
            wake_at = float(checkpoint.extra["wake_at"])
        else:
            wake_at = time.time() + self.duration
            await ctx.services.runtime.recorder.step(ctx.execution, key, "sleeping", None, None,
                                                     started_at=time.time(), extra={"wake_at": wake_at})
        remaining = wake_at - time.time()
        if remaining >= ctx.services.runtime.park_after:
            raise Parked(wake_at)
        if remaining > 0:
            await asyncio.sleep(remaining)
        return {"slept": self.duration}


class SubWorkflowConfig(Strict):
    name: Annotated[str, WorkflowRef()] = Field(description="The workflow to run.")
    input: Any = Field(None, description="Its input (templates allowed).")
    wait: bool = Field(True, description="Wait for it and return its output; otherwise return its execution id.")


# Sub-workflows nested deeper fail (`too_deep`): workflows calling each other in a cycle would otherwise take
# every concurrency slot of both and wait for each other for ever.
MAX_WORKFLOW_DEPTH = 32


class SubWorkflowStep(Step):
    def __init__(self, config: SubWorkflowConfig, build: StepBuilder) -> None:
        self.name = config.name
        self.input = build.compile(config.input, "workflow.input")
        self.wait = config.wait

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        runtime = ctx.services.runtime
        depth = ctx.execution.depth + 1
        if depth > MAX_WORKFLOW_DEPTH:
            too_deep = StepError(f"sub-workflow '{self.name}' would be nested {depth} deep (at most "
                                 f"{MAX_WORKFLOW_DEPTH}): do workflows call each other in a cycle?", code="too_deep")
            too_deep.retryable = False
            raise too_deep
        # Keyed by parent and step, so a resumed parent finds the child it started instead of starting another.
        key = (f"{ctx.execution.id}:{step_key.get()}:{ctx.execution.attempt}:{step_attempt.get()}"
               if ctx.durable else None)
        child = await runtime.admit_waiting(self.name, self.input.render(scope), trigger="workflow",
                                            parent_id=ctx.execution.id, idempotency_key=key)
        child.depth = depth  # before its first step runs: it has not been scheduled yet
        if not self.wait:
            return {"execution_id": child.id}
        try:
            child = await runtime.wait_finished(child)
        except asyncio.CancelledError:
            await runtime.cancel(child.id)  # the parent was cancelled: its waited-for child goes with it
            raise
        if child.status is not ExecutionStatus.SUCCESS:
            error = child.error or {}
            raise StepError(f"sub-workflow '{self.name}' ({child.id}) failed: {error.get('message')}",
                            code="subworkflow_failed", details=error)
        return child.output


class PublishConfig(Strict):
    topic: Annotated[str, TopicRef()] = Field(description="Topic to publish to (templates allowed): the event "
                                              "bus's dot-separated topics, or the `broker`'s own syntax.")
    message: Any = Field(None, description="The event data (templates allowed).")
    headers: dict[str, str] = Field(default_factory=dict, description="Event headers (templates allowed).")
    broker: Annotated[str | None, ModuleRef(("broker",))] = Field(
        None, description="A broker module to publish to (default: the engine's event bus). The step returns once "
        "the broker has the message; its id is the step's `message_id`, fixed per execution and step, so a "
        "step re-run after a crash repeats the same id (JetStream drops the copy; consumers deduplicate on it).",
    )
    key: str | None = Field(None, description="Message key (templates allowed): ordering and partitioning hint "
                            "carried to consumers as `input.key`.")


class PublishStep(Step):
    def __init__(self, config: PublishConfig, build: StepBuilder) -> None:
        # A broker's topic is checked in its own syntax by the config's reference check (TopicRef).
        if config.broker is None and "{{" not in config.topic and (problem := validate_pattern(config.topic)):
            build.issue("publish.topic", problem)
        self.topic = build.compile(config.topic, "publish.topic")
        self.message = build.compile(config.message, "publish.message")
        self.headers = build.compile(config.headers, "publish.headers")
        self.key = build.compile(config.key, "publish.key")
        self.broker = config.broker

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        topic = str(self.topic.render(scope))
        headers = header_values(self.headers.render(scope))
        headers.setdefault("execution_id", ctx.execution.id)
        # Fixed per execution and step: a step re-run after a crash publishes the same id again, which the broker
        # and the consumers' idempotency keys recognise as a duplicate.
        stable_id = f"{ctx.execution.id}:{step_key.get()}"
        if self.broker is None:
            try:
                delivered = await ctx.services.bus.publish(topic, self.message.render(scope), headers, strict=True,
                                                           event_id=stable_id)
            except BrokerError as exc:  # a broker-backed bus (engine.event_bus) refused the event
                raise StepError(f"event bus: {exc}", code=exc.code) from exc
            return {"topic": topic, "delivered": delivered}
        broker = ctx.services.modules.get(self.broker)
        if not isinstance(broker, Broker):
            raise StepError(f"module '{self.broker}' is not a broker", code="invalid_module")
        key = self.key.render(scope)
        try:
            message_id = await broker.publish(topic, self.message.render(scope), headers,
                                              None if key is None else str(key),
                                              message_id=stable_id)
        except BrokerError as exc:
            raise StepError(str(exc), code=exc.code) from exc
        return {"topic": topic, "message_id": message_id, "broker": self.broker}


RESPOND = StepSpec("respond", RespondConfig, RespondStep,
                   "Answer the HTTP caller now (the workflow may go on); the output is the body.")
LOG = StepSpec("log", LogConfig, LogStep, "Write a structured log line with the execution's context.",
               shorthand="message")
FAIL = StepSpec("fail", FailConfig, FailStep, "End the workflow with an error (optionally a 4xx for HTTP callers).",
                shorthand="message")
SLEEP = StepSpec("sleep", SleepConfig, SleepStep,
                 "Wait for a duration; in durable workflows a long sleep parks the execution in the store (no task, "
                 "no memory) and survives restarts.", shorthand="duration")
WORKFLOW = StepSpec("workflow", SubWorkflowConfig, SubWorkflowStep,
                    "Run another workflow as a child execution; wait for its output or not.", shorthand="name")
PUBLISH = StepSpec("publish", PublishConfig, PublishStep,
                   "Publish an event on the event bus, or a message to a broker module (`broker`).")
