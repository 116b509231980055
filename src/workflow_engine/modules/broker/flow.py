"""Flow control of broker modules: capped reconnect backoff and the bound on unsettled deliveries."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Capped exponential delays with +-20% jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.current = initial

    def next(self) -> float:
        delay = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.current * 2, self.maximum)
        return min(delay, self.maximum)

    def reset(self) -> None:
        self.current = self.initial


class InFlight:
    """Delivered-but-unsettled messages of one consumer, bounded by `limit`.

    Once full, `room` opens again only when a quarter of the limit (at most 64) is free: refilling one slot
    at a time would cost a broker round trip per message.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0
        self.refill = max(1, min(limit // 4, 64))
        self.room = asyncio.Event()
        self.room.set()
        self.empty = asyncio.Event()  # nothing delivered is unsettled
        self.empty.set()

    def take(self) -> None:
        self.count += 1
        self.empty.clear()
        if self.count >= self.limit:
            self.room.clear()

    def give(self) -> None:
        self.count -= 1
        if self.limit - self.count >= self.refill:
            self.room.set()
        if self.count == 0:
            self.empty.set()
