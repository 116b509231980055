"""Admission control per workflow: at most `concurrency` running, at most `queue_size` waiting, never more."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque

from workflow_engine.errors import QueueFullError
from workflow_engine.runtime.execution import Execution


class Gate:
    """Concurrency slots and a bounded FIFO queue for one workflow type."""

    __slots__ = (
        "_slot_waiters", "_space_waiters", "active", "concurrency", "pending", "queue", "queue_size",
        "recent_seconds", "workflow",
    )

    def __init__(self, workflow: str, concurrency: int, queue_size: int) -> None:
        self.workflow = workflow
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.active = 0
        self.pending = 0  # admitted, being recorded in the store, not yet running or queued
        self.queue: deque[Execution] = deque()
        self._space_waiters: deque[asyncio.Future[None]] = deque()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()  # `wait_for_slot`: woken when a slot frees
        # Exponential average of execution time, used for an honest Retry-After.
        self.recent_seconds = 1.0

    def offer(self, execution: Execution) -> bool:
        """Take `execution`: True when it may run now, False when queued; QueueFullError when neither."""
        self.reserve()
        return self.commit(execution)

    def has_room(self) -> bool:
        return self.active + len(self.queue) + self.pending < self.concurrency + self.queue_size

    def reserve(self) -> None:
        """Hold a place for an execution while it is recorded; QueueFullError when there is none."""
        if not self.has_room():
            raise QueueFullError(self.workflow, self.retry_after())
        self.pending += 1

    def commit(self, execution: Execution) -> bool:
        """Turn a reservation into a slot (True: run now) or a queue place (False)."""
        self.pending -= 1
        return self.adopt(execution)

    def unreserve(self) -> None:
        """Give a reservation back (the execution was not recorded, or was a duplicate)."""
        self.pending -= 1
        _wake_first(self._slot_waiters)
        self._wake_one()

    def adopt(self, execution: Execution) -> bool:
        """Take an execution this replica already owns (recovered or woken): run now (True) or queue it."""
        if self.active < self.concurrency and not self.queue:
            self.active += 1
            return True
        self.queue.append(execution)
        return False

    async def wait_for_room(self) -> None:
        """Wait until `offer` would not refuse (used by triggers that apply back-pressure)."""
        while not self.has_room():
            await _wait_in(self._space_waiters)

    def has_slot(self) -> bool:
        return self.active + self.pending < self.concurrency and not self.queue

    async def wait_for_slot(self) -> None:
        """Wait until an execution offered now would run at once rather than queue (a caller that runs it in
        its own task and holds its trigger's work meanwhile: a message handler)."""
        while not self.has_slot():
            await _wait_in(self._slot_waiters)

    def release(self, seconds: float) -> Execution | None:
        """A running execution finished: the next queued one takes its slot (returned), else the slot frees."""
        self.recent_seconds = 0.9 * self.recent_seconds + 0.1 * seconds
        nxt = self.queue.popleft() if self.queue else None
        if nxt is None:
            self.active -= 1
            _wake_first(self._slot_waiters)
        self._wake_one()
        return nxt

    def remove_queued(self, execution: Execution) -> bool:
        """Drop a queued execution (cancelled before it started)."""
        try:
            self.queue.remove(execution)
        except ValueError:
            return False
        _wake_first(self._slot_waiters)
        self._wake_one()
        return True

    def drain_queue(self) -> list[Execution]:
        """Empty the queue (shutdown); the caller settles the executions."""
        items = list(self.queue)
        self.queue.clear()
        return items

    def retry_after(self) -> int:
        """Seconds a refused caller should wait: roughly how long the queue takes to move one slot."""
        per_slot = self.recent_seconds / max(self.concurrency, 1)
        return max(1, min(60, math.ceil(per_slot * max(len(self.queue), 1))))

    def _wake_one(self) -> None:
        _wake_first(self._space_waiters)


async def _wait_in(waiters: deque[asyncio.Future[None]]) -> None:
    """Wait until woken from `waiters`. A waker takes the waiter out of the deque first, so only a cancelled
    wait has to find it there (a scan of the deque: hundreds of handlers may wait); one cancelled just after
    it was woken hands the wake-up on."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    except BaseException:
        if not waiter.done() or waiter.cancelled():
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
        else:
            _wake_first(waiters)
        raise


def _wake_first(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the first waiter still waiting."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return
