"""Coalescing: concurrent callers' small operations done as one batch (group commit, batched acks).

A caller submits an item and waits for its own result. The first submission starts a flush at once; items that
arrive while a flush runs wait for the next one, so batches grow with load and nothing waits on a timer.
`flush(items)` returns one result per item, in order: a value, or an exception instance for that item alone.
When `flush` itself raises, every item of the batch gets that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Batches `submit`ted items into calls of `flush`, at most `concurrency` flushes at a time."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R | BaseException]]], *, name: str,
                 concurrency: int = 1, max_batch: int = 500) -> None:
        self._flush_items = flush
        self._name = name
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # flushes done (tests and benchmarks read it)

    async def submit(self, item: T) -> R:
        """`item`'s result, once the batch it joined is flushed. A cancelled caller does not take the item back:
        it stays queued and is flushed with its batch (like a statement already sent to a server); cancelling
        the caller cancels only its future, whose result is then dropped."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append((item, future))
        if self._running < self._concurrency:
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._drain(), name=self._name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
                await self._one(batch)
        finally:
            self._running -= 1

    async def _one(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        try:
            results = await self._flush_items([item for item, _ in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        except BaseException:  # cancelled (the loop is closing): no caller may wait forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(RuntimeError(f"{self._name}: interrupted before the batch was done"))
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Wait for the flushes under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _retrieve(future: asyncio.Future[R]) -> None:
    """Mark an error as seen: a caller cancelled while waiting never reads it."""
    if not future.cancelled():
        future.exception()
