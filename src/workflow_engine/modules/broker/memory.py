"""The `broker.memory` module: an in-process, bounded broker with consumer groups (tests, single node).

One log of messages in publish order, at most `capacity` long. Each (group, topic pattern) has a cursor into
the log, the deliveries it has not settled, and a timer heap of nacked ones. A message leaves the log once every
group has passed and settled it; with no group at all, messages wait in the log (a group started later reads
them). A full log makes `publish` wait up to `operation_timeout`, then fail with `broker_full`. Everything is
lost with the process: use a real broker when messages must survive a restart.
"""

from __future__ import annotations

import asyncio
import heapq
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from workflow_engine.errors import BrokerError
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.broker.base import Broker, BrokerConfig, Subscription
from workflow_engine.modules.broker.message import Message
from workflow_engine.modules.eventbus.memory import compile_pattern
from workflow_engine.registry.specs import ModuleSpec


class MemoryBrokerConfig(BrokerConfig):
    """In-process broker."""

    capacity: int = Field(10_000, ge=1, description="Messages held at most (not yet settled by every group); "
                          "a full broker makes publishers wait, then fail.")


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    id: str
    topic: str
    payload: bytes
    headers: dict[str, str]
    key: str | None


@dataclass
class _Group:
    """A consumer group reading one topic pattern."""

    regex: re.Pattern[str]
    cursor: int
    deliveries: dict[int, int] = field(default_factory=dict)  # seq -> times delivered, until settled
    outstanding: dict[int, MemorySubscription] = field(default_factory=dict)  # delivered, unsettled: to whom
    due: list[tuple[float, int]] = field(default_factory=list)  # (not before, seq) heap of nacked/released


class MemoryBroker(Broker):
    """Consumer groups over an in-process log."""

    type_name = "broker.memory"
    shared_across_processes = False

    def __init__(self, name: str, config: MemoryBrokerConfig, ctx: ModuleContext) -> None:
        super().__init__(name, config, ctx)
        self.capacity = config.capacity
        self._log: dict[int, _Entry] = {}
        self._first = 0  # lowest seq still in the log
        self._next = 0
        self._groups: dict[tuple[str, str], _Group] = {}
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def _connect(self) -> None:
        """Nothing to connect to."""

    async def _disconnect(self) -> None:
        """Nothing to close; the log lives as long as the module object."""

    async def _ping(self) -> None:
        """Always reachable."""

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _publish(self, topic: str, payload: bytes, headers: dict[str, str], key: str | None,
                       message_id: str) -> None:
        if len(self._log) >= self.capacity:
            self._trim()
        while len(self._log) >= self.capacity:
            self._room.clear()
            try:
                async with asyncio.timeout(self.config.operation_timeout * 0.9):
                    await self._room.wait()
            except TimeoutError:
                raise BrokerError(f"{self.label}: full ({self.capacity} messages unsettled); publish to "
                                  f"'{topic}' refused", code="broker_full") from None
        seq = self._next
        self._next += 1
        self._log[seq] = _Entry(seq, message_id, topic, payload, dict(headers), key)
        self._notify()

    async def _subscribe(self, topic: str, group: str, max_in_flight: int) -> Subscription:
        state = self._groups.get((group, topic))
        if state is None:
            state = self._groups[(group, topic)] = _Group(compile_pattern(topic), self._first)
        return MemorySubscription(self, state)

    def _deliver(self, state: _Group, entry: _Entry, sub: MemorySubscription) -> Message:
        count = state.deliveries.get(entry.seq, 0) + 1
        state.deliveries[entry.seq] = count
        state.outstanding[entry.seq] = sub
        return Message(entry.id, entry.topic, entry.payload, dict(entry.headers), entry.key, count,
                       native=(state, entry.seq))

    def _take(self, state: _Group, sub: MemorySubscription, limit: int) -> list[Message]:
        out: list[Message] = []
        now = time.monotonic()
        while state.due and state.due[0][0] <= now and len(out) < limit:
            _, seq = heapq.heappop(state.due)
            if seq in state.deliveries and seq not in state.outstanding:
                out.append(self._deliver(state, self._log[seq], sub))
        while state.cursor < self._next and len(out) < limit:
            entry = self._log.get(state.cursor)
            state.cursor += 1
            if entry is not None and state.regex.match(entry.topic):
                out.append(self._deliver(state, entry, sub))
        return out

    def _settled(self, message: Message) -> tuple[_Group, int]:
        state, seq = message.native
        state.outstanding.pop(seq, None)
        return state, seq

    async def _ack(self, message: Message) -> None:
        state, seq = self._settled(message)
        state.deliveries.pop(seq, None)
        self._trim()

    async def _nack(self, message: Message, delay: float) -> None:
        state, seq = self._settled(message)
        heapq.heappush(state.due, (time.monotonic() + delay, seq))
        self._notify()

    def _release(self, sub: MemorySubscription) -> None:
        """A consumer went away: its unsettled messages are due again now."""
        state = sub.state
        for seq in [s for s, owner in state.outstanding.items() if owner is sub]:
            del state.outstanding[seq]
            heapq.heappush(state.due, (0.0, seq))
        self._notify()

    def _trim(self) -> None:
        groups = list(self._groups.values())
        if not groups:
            return
        while self._first < self._next:
            seq = self._first
            if any(seq >= g.cursor or seq in g.deliveries for g in groups):
                break
            self._log.pop(seq, None)
            self._first += 1
        if len(self._log) < self.capacity:
            self._room.set()

    async def _backlog(self, topic: str, group: str) -> int | None:
        state = self._groups.get((group, topic))
        if state is None:
            return sum(1 for e in self._log.values() if compile_pattern(topic).match(e.topic))
        ahead = sum(1 for seq in range(state.cursor, self._next)
                    if (e := self._log.get(seq)) is not None and state.regex.match(e.topic))
        return ahead + len(state.deliveries)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "held": len(self._log), "capacity": self.capacity}


class MemorySubscription(Subscription):
    def __init__(self, broker: MemoryBroker, state: _Group) -> None:
        self.broker = broker
        self.state = state

    async def fetch(self, limit: int, wait: float) -> list[Message]:
        deadline = time.monotonic() + wait
        while True:
            changed = self.broker._changed
            batch = self.broker._take(self.state, self, limit)
            if batch:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if self.state.due:
                remaining = min(remaining, max(0.001, self.state.due[0][0] - time.monotonic()))
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        self.broker._release(self)


SPEC = ModuleSpec(
    type="broker.memory",
    kind="broker",
    config_model=MemoryBrokerConfig,
    factory=MemoryBroker,
    check_topic=MemoryBroker.check_topic,
    summary="In-process bounded broker with consumer groups, acks, redelivery and dead letters (tests, one node; "
            "messages do not survive a restart).",
)
