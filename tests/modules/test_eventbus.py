"""The in-memory event bus: topic patterns, `wants`, bounded buffers that push back, handler failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.factories import TaskOwner
from workflow_engine.errors import WorkflowEngineError
from workflow_engine.modules.eventbus.memory import Event, EventBus, validate_pattern


class Inbox:
    """A handler that keeps the topics it received."""

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.topics.append(event.topic)
        self.events.append(event)


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    owner = TaskOwner()
    event_bus = EventBus(buffer=100)
    event_bus.start(owner.spawn)
    yield event_bus
    await owner.close()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


TOPICS = ["orders", "orders.created", "orders.eu.created", "orders.eu", "payments.created", "workflow.completed"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("orders.created", ["orders.created"]),
        ("orders.*", ["orders.created", "orders.eu"]),
        ("*.created", ["orders.created", "payments.created"]),
        ("orders.*.created", ["orders.eu.created"]),
        ("orders.>", ["orders.created", "orders.eu.created", "orders.eu"]),
        ("*.eu.>", ["orders.eu.created"]),
        (">", TOPICS),
    ],
)
async def test_patterns_select_topics(bus: EventBus, pattern: str, expected: list[str]) -> None:
    inbox = Inbox()
    bus.subscribe(pattern, inbox, name="test")
    for topic in TOPICS:
        assert bus.wants(topic) is (topic in expected)
        await bus.publish(topic, {"topic": topic})
    await bus.drain(5)
    assert inbox.topics == expected


async def test_publish_returns_how_many_subscribers_got_the_event(bus: EventBus) -> None:
    first, second = Inbox(), Inbox()
    bus.subscribe("orders.*", first, name="first")
    bus.subscribe("orders.>", second, name="second")
    assert await bus.publish("orders.created", {"id": 1}, {"source": "test"}) == 2
    assert await bus.publish("orders.eu.created", {"id": 2}) == 1
    assert await bus.publish("nobody.listens", {"id": 3}) == 0
    await bus.drain(5)
    assert first.events[0].data == {"id": 1}
    assert first.events[0].headers == {"source": "test"}
    assert [e.data["id"] for e in second.events] == [1, 2]


async def test_wants_follows_subscribe_and_unsubscribe(bus: EventBus) -> None:
    assert bus.wants("step.completed") is False
    subscription = bus.subscribe("step.*", Inbox(), name="steps")
    assert bus.wants("step.completed") is True
    bus.unsubscribe(subscription)
    assert bus.wants("step.completed") is False


@pytest.mark.parametrize("pattern", ["", "orders.", ".orders", "orders..created", "orders.>.created", "a b"])
async def test_invalid_patterns_are_refused(bus: EventBus, pattern: str) -> None:
    assert validate_pattern(pattern) is not None
    with pytest.raises(WorkflowEngineError):
        bus.subscribe(pattern, Inbox(), name="bad")


async def test_events_reach_a_subscriber_in_order(bus: EventBus) -> None:
    inbox = Inbox()
    bus.subscribe("n.*", inbox, name="ordered")
    for i in range(50):
        await bus.publish(f"n.{i}", i)
    await bus.drain(5)
    assert [e.data for e in inbox.events] == list(range(50))


async def test_a_full_buffer_makes_publish_wait_until_the_subscriber_catches_up(bus: EventBus) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    handled: list[int] = []

    async def slow(event: Event) -> None:
        entered.set()
        await release.wait()
        handled.append(event.data)

    bus.subscribe("work", slow, name="slow", buffer=1)
    await bus.publish("work", 1)
    await asyncio.wait_for(entered.wait(), 5)  # the handler holds event 1; the buffer is empty
    await asyncio.wait_for(bus.publish("work", 2), 5)  # fills the buffer
    blocked = asyncio.create_task(bus.publish("work", 3))
    await settle()
    assert not blocked.done()  # back-pressure: no room for event 3
    release.set()
    assert await asyncio.wait_for(blocked, 5) == 1
    await bus.drain(5)
    assert handled == [1, 2, 3]


async def test_a_slow_subscriber_holds_publishers_back_and_nobody_loses_events(bus: EventBus) -> None:
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()

    fast = Inbox()
    bus.subscribe("t", slow, name="slow", buffer=1)
    bus.subscribe("t", fast, name="fast", buffer=10)
    publishing = asyncio.create_task(_publish(bus, "t", 3))
    await settle()
    assert not publishing.done()
    release.set()
    await asyncio.wait_for(publishing, 5)
    await bus.drain(5)
    assert len(fast.events) == 3


async def _publish(bus: EventBus, topic: str, count: int) -> None:
    for i in range(count):
        await bus.publish(topic, i)


async def test_a_failing_handler_does_not_stop_the_subscriber(bus: EventBus) -> None:
    handled: list[int] = []

    async def picky(event: Event) -> None:
        if event.data % 2:
            raise ValueError(f"odd event {event.data}")
        handled.append(event.data)

    bus.subscribe("numbers", picky, name="picky")
    for i in range(5):
        await bus.publish("numbers", i)
    await bus.drain(5)
    assert handled == [0, 2, 4]
    subscription = bus.subscriptions[0]
    assert subscription.task is not None
    assert not subscription.task.done()


async def test_subscribers_added_before_start_begin_consuming_at_start() -> None:
    owner = TaskOwner()
    event_bus = EventBus()
    inbox = Inbox()
    subscription = event_bus.subscribe("early", inbox, name="early")
    assert subscription.task is None
    event_bus.start(owner.spawn)
    try:
        await event_bus.publish("early", "hello")
        await event_bus.drain(5)
        assert inbox.topics == ["early"]
    finally:
        await owner.close()
