"""Coalescer: concurrent submissions share flushes, each caller gets its own result or error."""

from __future__ import annotations

import asyncio

import pytest

from workflow_engine.coalesce import Coalescer


class Recorder:
    def __init__(self, fail_on: set[int] | None = None, raise_all: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on or set()
        self.raise_all = raise_all

    async def flush(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await asyncio.sleep(0.01)  # a round trip: later submissions queue for the next flush
        if self.raise_all:
            raise ConnectionError("server gone")
        return [ValueError(f"bad {i}") if i in self.fail_on else i * 10 for i in items]


async def test_concurrent_submissions_share_flushes_in_order() -> None:
    rec = Recorder()
    coalescer = Coalescer(rec.flush, name="t")
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0.001)  # its flush is under way
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(1, 100)))
    assert await first == 0
    assert results == [i * 10 for i in range(1, 100)]
    # The first flushed alone at once; the other 99 arrived during that flush and shared the next one.
    assert rec.batches == [[0], list(range(1, 100))]
    assert coalescer.batches == 2


async def test_an_idle_submission_is_flushed_at_once() -> None:
    rec = Recorder()
    coalescer = Coalescer(rec.flush, name="t")
    assert await coalescer.submit(1) == 10
    assert await coalescer.submit(2) == 20
    assert rec.batches == [[1], [2]]


async def test_one_items_error_fails_only_its_caller() -> None:
    coalescer = Coalescer(Recorder(fail_on={3}).flush, name="t")
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(6)), return_exceptions=True)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(results[3], ValueError)


async def test_a_failed_flush_fails_every_caller_of_the_batch() -> None:
    coalescer = Coalescer(Recorder(raise_all=True).flush, name="t")
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_cancelled_caller_still_has_its_item_flushed() -> None:
    rec = Recorder()
    coalescer = Coalescer(rec.flush, name="t")
    first = asyncio.create_task(coalescer.submit(1))
    waiting = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await first == 10
    await coalescer.close()
    assert [i for batch in rec.batches for i in batch] == [1, 2]


async def test_max_batch_and_concurrency() -> None:
    rec = Recorder()
    coalescer = Coalescer(rec.flush, name="t", concurrency=2, max_batch=10)
    await asyncio.gather(*(coalescer.submit(i) for i in range(50)))
    assert max(len(b) for b in rec.batches) <= 10
    assert sorted(i for batch in rec.batches for i in batch) == list(range(50))
