"""The `event` trigger: run the workflow for each event-bus event whose topic matches a pattern."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from pydantic import Field, field_validator

from workflow_engine.config.models import Strict
from workflow_engine.errors import DrainingError
from workflow_engine.modules.eventbus.broker import BrokerEventBus
from workflow_engine.modules.eventbus.memory import Event, Subscription, compile_pattern, validate_pattern
from workflow_engine.registry.specs import TriggerSpec
from workflow_engine.triggers.base import Trigger, TriggerBuilder, Wiring

if TYPE_CHECKING:
    from collections.abc import Iterable

    from workflow_engine.runtime.program import CompiledWorkflow
    from workflow_engine.runtime.runtime import Runtime

log = structlog.get_logger("workflow_engine.event")

# Topics the runtime publishes about executions and steps (their data names the workflow).
LIFECYCLE_TOPICS = frozenset({
    "workflow.started", "workflow.completed", "workflow.failed", "step.started", "step.completed", "step.failed",
})


class EventTriggerConfig(Strict):
    topic: str = Field(description="Topic pattern: `*` matches one token, `>` (last) the rest; e.g. workflow.*")
    buffer: int = Field(1000, ge=1, description="Events buffered for this workflow before publishers wait.")

    @field_validator("topic")
    @classmethod
    def _pattern(cls, value: str) -> str:
        problem = validate_pattern(value)
        if problem:
            raise ValueError(problem)
        return value


class EventTrigger(Trigger):
    """Local bus: a subscription. Broker-backed bus (`engine.event_bus`): a consume loop with the workflow's
    name as consumer group, so each event starts one execution cluster-wide."""

    kind = "event"

    def __init__(self, workflow: str, config: EventTriggerConfig) -> None:
        super().__init__(workflow)
        self.config = config
        self.subscription: Subscription | None = None

    def attach(self, wiring: Wiring) -> None:
        if wiring.bus.backed:
            self.has_loop = True
            return
        runtime = wiring.runtime

        async def deliver(event: Event) -> None:
            try:
                await self.admit(runtime, event)
            except DrainingError:
                log.warning("event not run: the engine is shutting down", workflow_type=self.workflow,
                            topic=event.topic, event_id=event.id)

        self.subscription = wiring.bus.subscribe(self.config.topic, deliver, name=f"workflow:{self.workflow}",
                                                 buffer=self.config.buffer)

    def detach(self, wiring: Wiring) -> None:
        if self.subscription is not None:
            wiring.bus.unsubscribe(self.subscription)
            self.subscription = None

    async def run(self, wiring: Wiring) -> None:
        """Broker-backed bus: admit each matching event once cluster-wide (acked once admitted; an admission
        error, e.g. draining, leaves it to be delivered again)."""
        assert isinstance(wiring.bus, BrokerEventBus)
        regex = compile_pattern(self.config.topic)
        runtime = wiring.runtime

        async def deliver(event: Event) -> None:
            await self.admit(runtime, event, idempotency_key=f"event:{event.id}")

        await wiring.bus.consume(self.workflow, lambda topic: regex.match(topic) is not None, deliver)

    async def admit(self, runtime: Runtime, event: Event, idempotency_key: str | None = None) -> None:
        """Start an execution for `event` (not for this workflow's own lifecycle events)."""
        if _own_lifecycle_event(event, self.workflow):
            return
        # Waiting for room (instead of refusing) pushes back on publishers through the bounded buffer.
        payload = {"topic": event.topic, "data": event.data, "headers": event.headers, "id": event.id}
        await runtime.admit(self.workflow, payload, trigger="event", wait=True, idempotency_key=idempotency_key,
                            lifecycle_events=event.topic not in LIFECYCLE_TOPICS)


def _own_lifecycle_event(event: Event, workflow: str) -> bool:
    """A lifecycle event of this workflow's own executions: running for it would trigger itself forever."""
    return (event.topic in LIFECYCLE_TOPICS and isinstance(event.data, dict)
            and event.data.get("workflow") == workflow)


def event_patterns(workflows: Iterable[CompiledWorkflow]) -> list[str]:
    """The topic patterns of the `event` triggers of `workflows`."""
    return [wf.trigger.config.topic for wf in workflows if isinstance(wf.trigger, EventTrigger)]


def _factory(config: EventTriggerConfig, build: TriggerBuilder) -> EventTrigger:
    return EventTrigger(build.workflow, config)


SPEC = TriggerSpec("event", EventTriggerConfig, _factory,
                   "Run for each event-bus event matching a topic pattern (including workflow.* lifecycle events).")
