"""The `event` trigger: run the workflow for each event-bus event whose topic matches a pattern."""

from __future__ import annotations

import structlog
from pydantic import Field, field_validator

from workflow_engine.config.models import Strict
from workflow_engine.errors import DrainingError
from workflow_engine.modules.eventbus.memory import Event, Subscription, validate_pattern
from workflow_engine.registry.specs import TriggerSpec
from workflow_engine.triggers.base import Trigger, TriggerBuilder, Wiring

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
    kind = "event"

    def __init__(self, workflow: str, config: EventTriggerConfig) -> None:
        super().__init__(workflow)
        self.config = config
        self.subscription: Subscription | None = None

    def attach(self, wiring: Wiring) -> None:
        runtime = wiring.runtime

        async def deliver(event: Event) -> None:
            if _own_lifecycle_event(event, self.workflow):
                return
            # Waiting for room (instead of refusing) pushes back on publishers through the bounded buffer.
            payload = {"topic": event.topic, "data": event.data, "headers": event.headers, "id": event.id}
            try:
                await runtime.admit(self.workflow, payload, trigger="event", wait=True,
                                            lifecycle_events=event.topic not in LIFECYCLE_TOPICS)
            except DrainingError:
                log.warning("event not run: the engine is shutting down", workflow_type=self.workflow,
                            topic=event.topic, event_id=event.id)

        self.subscription = wiring.bus.subscribe(self.config.topic, deliver, name=f"workflow:{self.workflow}",
                                                 buffer=self.config.buffer)

    def detach(self, wiring: Wiring) -> None:
        if self.subscription is not None:
            wiring.bus.unsubscribe(self.subscription)
            self.subscription = None


def _own_lifecycle_event(event: Event, workflow: str) -> bool:
    """A lifecycle event of this workflow's own executions: running for it would trigger itself forever."""
    return (event.topic in LIFECYCLE_TOPICS and isinstance(event.data, dict)
            and event.data.get("workflow") == workflow)


def _factory(config: EventTriggerConfig, build: TriggerBuilder) -> EventTrigger:
    return EventTrigger(build.workflow, config)


SPEC = TriggerSpec("event", EventTriggerConfig, _factory,
                   "Run for each event-bus event matching a topic pattern (including workflow.* lifecycle events).")
