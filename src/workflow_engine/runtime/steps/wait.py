"""The `wait_for` step: wait for an event-bus event matching an expression, with a timeout.

In a durable workflow the execution parks in the store while it waits (no task, no memory) and survives
restarts; the engine resumes it when a matching event is published, or fails the step at the timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import Field, field_validator

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import StepTimeoutError
from workflow_engine.modules.eventbus.memory import Event
from workflow_engine.registry.specs import StepSpec
from workflow_engine.runtime.parking import Parked
from workflow_engine.runtime.step import Scope, Step, StepBuilder, StepContext, step_key
from workflow_engine.runtime.templates import truthy


class WaitForConfig(Strict):
    topic: str = Field(description="The exact event topic to wait for (no wildcards).")
    match: str | None = Field(
        None, description="Condition the event must meet (template; `event` holds topic, data, headers, id)."
    )
    timeout: Duration = Field(gt=0, description="How long to wait before the step fails with code `timeout`.")

    @field_validator("topic")
    @classmethod
    def _exact(cls, value: str) -> str:
        if "*" in value or ">" in value or "{{" in value or not value:
            raise ValueError("wait_for topic must be an exact topic (no wildcards or templates)")
        return value


def event_dict(event: Event) -> dict[str, Any]:
    """The event as steps see it (`event` in `match`, the step's output)."""
    return {"topic": event.topic, "data": event.data, "headers": event.headers, "id": event.id}


class WaitForStep(Step):
    def __init__(self, config: WaitForConfig, build: StepBuilder) -> None:
        self.topic = config.topic
        self.timeout = config.timeout
        self.match = build.expression(config.match, "wait_for.match") if config.match else None

    def matches(self, scope: Scope, event: dict[str, Any]) -> bool:
        """Whether `event` satisfies the step's condition in `scope`."""
        return self.match is None or truthy(self.match.render({**scope, "event": event}))

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        if not ctx.durable:
            return await self._wait_in_memory(ctx, scope)
        key = step_key.get()
        checkpoint = ctx.execution.checkpoints.get(key)
        if checkpoint is not None and checkpoint.status == "waiting":
            deadline = float(checkpoint.extra["deadline"])
        else:
            deadline = time.time() + self.timeout
            await ctx.services.runtime.recorder.step(ctx.execution, key, "waiting", None, None,
                                                     started_at=time.time(),
                                                     extra={"deadline": deadline, "topic": self.topic})
        if time.time() >= deadline:
            raise StepTimeoutError(f"no '{self.topic}' event matched within {self.timeout:g}s")
        raise Parked(deadline, self.topic, {"step_key": key})

    async def _wait_in_memory(self, ctx: StepContext, scope: Scope) -> Any:
        arrived: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def on_event(event: Event) -> None:
            data = event_dict(event)
            if not arrived.done() and self.matches(scope, data):
                arrived.set_result(data)

        bus = ctx.services.bus
        subscription = bus.subscribe(self.topic, on_event, name=f"wait_for:{ctx.execution.id}")
        try:
            async with asyncio.timeout(self.timeout):
                return await arrived
        except TimeoutError as exc:
            raise StepTimeoutError(f"no '{self.topic}' event matched within {self.timeout:g}s") from exc
        finally:
            bus.unsubscribe(subscription)


WAIT_FOR = StepSpec("wait_for", WaitForConfig, WaitForStep,
                    "Wait for an event matching a condition, with a timeout; the output is the event. Durable "
                    "workflows wait parked in the store.")
