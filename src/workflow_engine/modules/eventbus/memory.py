"""The in-memory event bus: topic patterns, a bounded buffer per subscriber, back-pressure on publish.

Patterns use NATS syntax on dot-separated topics: `*` matches one token, `>` (last) matches one or more.
`workflow.*` sees `workflow.completed`; `orders.>` sees `orders.created` and `orders.eu.created`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from workflow_engine.errors import WorkflowEngineError
from workflow_engine.ids import uuid7

log = structlog.get_logger("workflow_engine.eventbus")

_PATTERN = re.compile(r"^(?:[A-Za-z0-9_\-]+|\*)(?:\.(?:[A-Za-z0-9_\-]+|\*))*(?:\.>)?$|^>$")


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    data: Any
    headers: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=uuid7)
    time: float = field(default_factory=time.time)


Handler = Callable[[Event], Awaitable[None]]


def new_event(topic: str, data: Any, headers: dict[str, str] | None, event_id: str | None) -> Event:
    """An event with `event_id`, or a fresh time-ordered id."""
    if event_id is None:
        return Event(topic, data, headers or {})
    return Event(topic, data, headers or {}, event_id)


def validate_pattern(pattern: str) -> str | None:
    """An error message when `pattern` is not a valid topic pattern, else None."""
    if not _PATTERN.match(pattern):
        return f"invalid topic pattern {pattern!r}: use dot-separated tokens, '*' for one token, '>' last for the rest"
    return None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A regex matching the topics `pattern` selects."""
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r".+")
        else:
            parts.append(re.escape(token))
    return re.compile(r"\.".join(parts) + "$")


class Subscription:
    """One subscriber: its pattern, its bounded buffer and the task that feeds its handler."""

    def __init__(self, pattern: str, handler: Handler, name: str, buffer: int) -> None:
        self.pattern = pattern
        self.regex = compile_pattern(pattern)
        self.handler = handler
        self.name = name
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=buffer)
        self.task: asyncio.Task[None] | None = None

    async def consume(self) -> None:
        """Feed buffered events to the handler, one at a time, until cancelled."""
        while True:
            event = await self.queue.get()
            try:
                await self.handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervision boundary: one bad event must not stop the subscriber
                log.error("event handler failed", subscriber=self.name, topic=event.topic, error=exc)
            finally:
                self.queue.task_done()


Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class EventBus:
    """Publish/subscribe inside one engine process."""

    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer
        self.subscriptions: list[Subscription] = []
        self._wants: dict[str, tuple[Subscription, ...]] = {}
        self._spawn: Spawn | None = None
        self.closed = False

    def subscribe(self, pattern: str, handler: Handler, *, name: str, buffer: int | None = None) -> Subscription:
        """Deliver events whose topic matches `pattern` to `handler` (in order, one at a time)."""
        error = validate_pattern(pattern)
        if error:
            raise WorkflowEngineError(f"subscriber '{name}': {error}")
        sub = Subscription(pattern, handler, name, buffer or self.buffer)
        self.subscriptions.append(sub)
        self._wants.clear()
        if self._spawn is not None:
            sub.task = self._spawn(sub.consume(), f"eventbus:{name}")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)
            self._wants.clear()
        if sub.task is not None:
            sub.task.cancel()

    def start(self, spawn: Spawn) -> None:
        """Start delivering: each subscription's consumer becomes a task owned by the caller's task group."""
        self._spawn = spawn
        for sub in self.subscriptions:
            if sub.task is None:
                sub.task = spawn(sub.consume(), f"eventbus:{sub.name}")

    def _matching(self, topic: str) -> tuple[Subscription, ...]:
        subs = self._wants.get(topic)
        if subs is None:
            subs = tuple(s for s in self.subscriptions if s.regex.match(topic))
            if len(self._wants) > 10_000:  # topics are open-ended; keep the cache bounded
                self._wants.clear()
            self._wants[topic] = subs
        return subs

    def wants(self, topic: str) -> bool:
        """True when some subscriber would receive `topic` (lets publishers skip building events)."""
        subs = self._wants.get(topic)  # `_matching`'s cache, read here: this runs several times per execution
        return bool(subs if subs is not None else self._matching(topic))

    @property
    def backed(self) -> bool:
        """Whether a broker carries events between replicas (see `modules/eventbus/broker.py`)."""
        return False

    async def publish(self, topic: str, data: Any, headers: dict[str, str] | None = None, *,
                      strict: bool = False, event_id: str | None = None) -> int:
        """Buffer the event for every matching subscriber, waiting while a buffer is full; returns the count.
        (`strict`: a broker-backed bus raises instead of logging when the broker refuses the event. `event_id`:
        a stable id, e.g. the publishing step's, so that a re-run publish is recognised as the same event.)"""
        subs = self._matching(topic)
        if not subs:
            return 0
        return await self.deliver(new_event(topic, data, headers, event_id), subs)

    async def deliver(self, event: Event, subs: tuple[Subscription, ...] | None = None) -> int:
        """Buffer `event` for the local subscribers matching its topic; returns the count."""
        subs = self._matching(event.topic) if subs is None else subs
        for sub in subs:
            await sub.queue.put(event)
        return len(subs)

    async def drain(self, limit: float) -> None:
        """Wait (bounded) until every buffered event was handled."""
        waits = [sub.queue.join() for sub in self.subscriptions if sub.task is not None]
        if waits:
            try:
                async with asyncio.timeout(limit):
                    await asyncio.gather(*waits)
            except TimeoutError:
                log.warning("event bus drain timed out", pending=sum(s.queue.qsize() for s in self.subscriptions))
