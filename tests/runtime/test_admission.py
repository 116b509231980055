"""The admission gate: concurrency slots, a bounded FIFO queue, refusal with Retry-After, waiting for room."""

from __future__ import annotations

import asyncio

import pytest

from workflow_engine.errors import QueueFullError
from workflow_engine.runtime.admission import Gate
from workflow_engine.runtime.execution import Execution


def execution(n: int) -> Execution:
    return Execution(f"e{n}", "orders", {"n": n}, "manual")


async def settle() -> None:
    """Let every ready callback run a few times over."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_slots_then_queue_then_refusal() -> None:
    gate = Gate("orders", concurrency=2, queue_size=1)
    assert gate.offer(execution(1)) is True
    assert gate.offer(execution(2)) is True
    assert gate.offer(execution(3)) is False
    with pytest.raises(QueueFullError) as caught:
        gate.offer(execution(4))
    assert caught.value.retry_after >= 1
    assert caught.value.code == "queue_full"
    assert caught.value.http_status == 503
    assert "orders" in caught.value.message
    assert gate.active == 2
    assert [e.id for e in gate.queue] == ["e3"]


async def test_no_queue_refuses_as_soon_as_the_slots_are_taken() -> None:
    gate = Gate("orders", concurrency=1, queue_size=0)
    assert gate.offer(execution(1)) is True
    with pytest.raises(QueueFullError):
        gate.offer(execution(2))


async def test_queue_is_first_in_first_out_and_release_hands_over_the_slot() -> None:
    gate = Gate("orders", concurrency=1, queue_size=3)
    assert gate.offer(execution(0)) is True
    for n in (1, 2, 3):
        assert gate.offer(execution(n)) is False
    handed = [gate.release(0.01) for _ in range(3)]
    assert [e.id for e in handed if e is not None] == ["e1", "e2", "e3"]
    assert gate.active == 1  # each release gave the slot to the next queued execution
    assert gate.release(0.01) is None
    assert gate.active == 0


async def test_a_queued_execution_keeps_its_place_behind_a_free_slot() -> None:
    gate = Gate("orders", concurrency=2, queue_size=2)
    gate.offer(execution(1))
    gate.offer(execution(2))
    assert gate.offer(execution(3)) is False
    # A slot frees and goes to the queued execution: a newcomer does not jump the queue.
    nxt = gate.release(0.01)
    assert nxt is not None
    assert nxt.id == "e3"
    assert gate.offer(execution(4)) is False


async def test_wait_for_room_wakes_when_a_slot_is_released() -> None:
    gate = Gate("orders", concurrency=1, queue_size=1)
    gate.offer(execution(1))
    gate.offer(execution(2))
    assert not gate.has_room()
    waiter = asyncio.create_task(gate.wait_for_room())
    await settle()
    assert not waiter.done()
    gate.release(0.01)  # e2 takes the slot; the queue has room again
    await asyncio.wait_for(waiter, 5)
    assert gate.has_room()
    assert gate.offer(execution(3)) is False


async def test_wait_for_room_returns_at_once_when_there_is_room() -> None:
    gate = Gate("orders", concurrency=1, queue_size=0)
    await asyncio.wait_for(gate.wait_for_room(), 5)


async def test_release_wakes_one_waiter_per_freed_place() -> None:
    gate = Gate("orders", concurrency=1, queue_size=1)
    gate.offer(execution(1))
    gate.offer(execution(2))
    first = asyncio.create_task(gate.wait_for_room())
    second = asyncio.create_task(gate.wait_for_room())
    await settle()
    gate.release(0.01)
    await asyncio.wait_for(first, 5)
    gate.offer(execution(3))  # the woken caller takes the place
    await settle()
    assert not second.done()
    gate.release(0.01)
    await asyncio.wait_for(second, 5)


async def test_remove_queued_drops_it_and_wakes_a_waiter() -> None:
    gate = Gate("orders", concurrency=1, queue_size=2)
    gate.offer(execution(1))
    queued = [execution(2), execution(3)]
    for e in queued:
        gate.offer(e)
    waiter = asyncio.create_task(gate.wait_for_room())
    await settle()
    assert not waiter.done()
    assert gate.remove_queued(queued[0]) is True
    await asyncio.wait_for(waiter, 5)
    assert [e.id for e in gate.queue] == ["e3"]
    assert gate.remove_queued(queued[0]) is False
    nxt = gate.release(0.01)
    assert nxt is not None
    assert nxt.id == "e3"


async def test_drain_queue_empties_it() -> None:
    gate = Gate("orders", concurrency=1, queue_size=2)
    gate.offer(execution(1))
    gate.offer(execution(2))
    gate.offer(execution(3))
    assert [e.id for e in gate.drain_queue()] == ["e2", "e3"]
    assert not gate.queue


async def test_retry_after_grows_with_the_queue_and_stays_bounded() -> None:
    gate = Gate("orders", concurrency=1, queue_size=100)
    gate.offer(execution(0))
    for n in range(1, 11):
        gate.offer(execution(n))
    short = Gate("orders", concurrency=1, queue_size=1)
    short.offer(execution(0))
    short.offer(execution(1))
    assert gate.retry_after() > short.retry_after() >= 1
    gate.recent_seconds = 1000.0
    assert gate.retry_after() == 60


async def test_wait_for_slot_waits_for_a_free_slot_not_for_a_queue_place() -> None:
    """A caller that runs the execution in its own task (a message handler) waits until it would run at once:
    a queued execution takes a freed slot first, and only a slot with nobody queued wakes the slot waiter."""
    gate = Gate("orders", concurrency=1, queue_size=5)
    gate.offer(execution(1))
    gate.offer(execution(2))  # queued
    assert gate.has_room()
    slot = asyncio.create_task(gate.wait_for_slot())
    room = asyncio.create_task(gate.wait_for_room())
    await settle()
    assert room.done()  # the queue has room
    assert not slot.done()
    nxt = gate.release(0.01)  # e1 ends: e2 takes the slot
    assert nxt is not None
    await settle()
    assert not slot.done()
    assert gate.release(0.01) is None  # e2 ends: the slot is free, nobody queued
    await asyncio.wait_for(slot, 5)
    assert gate.offer(execution(3)) is True


async def test_a_waiter_cancelled_just_after_it_was_woken_hands_the_wake_up_on() -> None:
    gate = Gate("orders", concurrency=1, queue_size=0)
    gate.offer(execution(1))
    first = asyncio.create_task(gate.wait_for_slot())
    second = asyncio.create_task(gate.wait_for_slot())
    await settle()
    gate.release(0.01)  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.wait_for(second, 5)  # `second` got the wake-up
    assert first.cancelled()
    assert gate.has_slot()
