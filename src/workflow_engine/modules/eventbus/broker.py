"""The event bus backed by a broker module (`engine.event_bus`): events the cluster wants cross replicas.

Publishing: local subscribers (the API's event feed, `wait_for` in non-durable workflows) get every event of
their replica exactly as with the in-memory bus. An event whose topic matches a *cluster pattern* (the pattern
of an `event` trigger or the topic of a `wait_for` step in the running program, see `route`) is also published
once to the broker topic `event_bus.topic`: body = the event data, headers = the event headers plus
`x-event-topic`, `x-event-id` and, where there is one, `x-execution-id`; message id = event id.

Consuming: `event` triggers and the `wait_for` waiters do not subscribe locally; each runs `consume` with its
own consumer group (shared by the replicas: one of them gets each event), skips (acks) events it does not want,
hands the others to its handler and acks once the handler returned; a handler that raised nacks the message
so the broker delivers it again. Unsettled messages of a stopped consumer are redelivered by the broker.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog

from workflow_engine.config.models import EventBusConfig
from workflow_engine.errors import BrokerError, BrokerUnavailableError, WorkflowEngineError
from workflow_engine.modules.base import Module
from workflow_engine.modules.broker.base import Broker, reraise_if_cancelled
from workflow_engine.modules.broker.message import Message
from workflow_engine.modules.eventbus.memory import Event, EventBus, compile_pattern, new_event

log = structlog.get_logger("workflow_engine.eventbus")

TOPIC_HEADER = "x-event-topic"
ID_HEADER = "x-event-id"
EXECUTION_HEADER = "x-execution-id"
BUS_HEADERS = frozenset({TOPIC_HEADER, ID_HEADER, EXECUTION_HEADER})
# Seconds before a message whose handler failed (the engine draining, the store down) is delivered again,
# doubling with each delivery up to RETRY_MAX: an outage is waited out without a retry storm, nothing is dropped.
RETRY_DELAY = 1.0
RETRY_MAX = 60.0

EventHandler = Callable[[Event], Awaitable[None]]


class BrokerEventBus(EventBus):
    """The in-process bus plus a broker topic for the events that triggers and waits of any replica want."""

    def __init__(self, config: EventBusConfig, modules: Mapping[str, Module], ready: asyncio.Event,
                 buffer: int = 1000) -> None:
        super().__init__(buffer)
        self.config = config
        self.modules = modules
        self.ready = ready  # set while the broker module is started (its supervisor's readiness)
        self._patterns: tuple[re.Pattern[str], ...] = ()
        self._crosses: dict[str, bool] = {}

    @property
    def backed(self) -> bool:
        return True

    def route(self, patterns: Iterable[str]) -> None:
        """Set the topic patterns that some consumer of the cluster wants (computed from the running program)."""
        self._patterns = tuple(compile_pattern(pattern) for pattern in sorted(set(patterns)))
        self._crosses.clear()

    def crosses(self, topic: str) -> bool:
        """Whether an event of `topic` goes to the broker (some trigger or wait of the cluster wants it)."""
        crosses = self._crosses.get(topic)
        if crosses is None:
            crosses = any(regex.match(topic) for regex in self._patterns)
            if len(self._crosses) > 10_000:  # topics are open-ended; keep the cache bounded
                self._crosses.clear()
            self._crosses[topic] = crosses
        return crosses

    def wants(self, topic: str) -> bool:
        return self.crosses(topic) or super().wants(topic)

    async def publish(self, topic: str, data: Any, headers: dict[str, str] | None = None, *,
                      strict: bool = False, event_id: str | None = None) -> int:
        """Deliver locally, then publish to the broker when the cluster wants `topic`; returns the deliveries
        (the broker counts as one). A refused publish raises with `strict` (the `publish` step), else it is
        logged as an error (lifecycle events; `broker_messages_total{status="error"}` counts it too)."""
        event = new_event(topic, data, headers, event_id)
        delivered = await self.deliver(event)
        if not self.crosses(topic):
            return delivered
        try:
            await self.send(event)
        except BrokerError as exc:
            if strict:
                raise
            log.error("event not published to the event bus broker; other replicas miss it", topic=topic,
                      event_id=event.id, broker=self.config.broker, error=exc)
            return delivered
        return delivered + 1

    async def send(self, event: Event) -> None:
        """Publish `event` to the broker topic (raises `BrokerError` when the broker refuses it)."""
        broker = await self.broker(self._publish_timeout())
        headers = {**event.headers, TOPIC_HEADER: event.topic, ID_HEADER: event.id}
        execution = event.headers.get("execution_id")
        if execution is None and isinstance(event.data, dict):
            execution = event.data.get("execution_id")
        if execution is not None:
            headers[EXECUTION_HEADER] = str(execution)
        await broker.publish(self.config.topic, event.data, headers, message_id=event.id)

    async def broker(self, limit: float | None = None) -> Broker:
        """The broker module once it is started, waiting at most `limit` seconds (None: as long as it takes)."""
        module = self.modules.get(self.config.broker)
        if not isinstance(module, Broker):  # the config check rules this out; a guard for hand-built engines
            raise WorkflowEngineError(f"event bus: module '{self.config.broker}' is not a broker",
                                      code="invalid_config")
        if not self.ready.is_set():
            try:
                async with asyncio.timeout(limit):
                    await self.ready.wait()
            except TimeoutError:
                raise BrokerUnavailableError(f"{module.label}: not started within {limit:g}s; the event bus "
                                             "cannot publish") from None
        return module

    def _publish_timeout(self) -> float:
        module = self.modules.get(self.config.broker)
        return module.config.publish_timeout if isinstance(module, Broker) else 0.0

    async def consume(self, group: str, wants: Callable[[str], bool], handler: EventHandler) -> None:
        """Hand each broker event whose topic `wants` to `handler` as consumer group `group`, one at a time; ack
        once it returned, nack when it raised. Runs until cancelled (unsettled messages are redelivered)."""
        broker = await self.broker()
        log.info("consuming the event bus", broker=broker.name, topic=self.config.topic, group=group)
        async for message in broker.consume(self.config.topic, group, self.config.max_in_flight):
            event = event_of(message)
            if event is None or not wants(event.topic):
                await _settle(message.ack(), message, group)
                continue
            try:
                await handler(event)
            except Exception as exc:  # supervision boundary: the broker delivers it again
                reraise_if_cancelled(exc)
                delay = retry_delay(message.delivery_count)
                (log.warning if message.delivery_count < 5 else log.error)(
                    "event not handled; it will be delivered again", group=group, topic=event.topic,
                    event_id=event.id, deliveries=message.delivery_count, retry_in=delay, error=exc)
                await _settle(message.nack(delay), message, group)
                continue
            await _settle(message.ack(), message, group)


def retry_delay(deliveries: int) -> float:
    """Seconds before an event whose handling failed `deliveries` times is delivered again."""
    return min(RETRY_MAX, RETRY_DELAY * float(2 ** max(0, min(deliveries - 1, 16))))


def event_of(message: Message) -> Event | None:
    """The bus event a broker message carries, or None when the message was not published by an event bus."""
    topic = message.headers.get(TOPIC_HEADER)
    if topic is None:
        return None
    headers = {k: v for k, v in message.headers.items() if k not in BUS_HEADERS}
    return Event(topic, message.body, headers, message.headers.get(ID_HEADER) or message.id)


async def _settle(settling: Awaitable[None], message: Message, group: str) -> None:
    try:
        await settling
    except BrokerError as exc:  # counted by the broker; the message is delivered again
        log.warning("event bus message not settled; it will be delivered again", group=group,
                    message_id=message.id, error=exc)
