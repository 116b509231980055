"""LoopMonitor: a blocked loop shows up as lag; the task count is published; cancellation stops it."""

from __future__ import annotations

import asyncio
import time

from workflow_engine.observability.loop_monitor import LoopMonitor
from workflow_engine.observability.metrics import Metrics


def _block_the_loop(seconds: float) -> None:
    # Deliberately synchronous: this is the blocking code the monitor exists to expose.
    time.sleep(seconds)


async def test_blocking_the_loop_is_recorded_as_lag() -> None:
    metrics = Metrics(process=False)
    monitor = LoopMonitor(metrics, interval=0.01)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.03)

    # The monitor is asleep in its own task, so it wakes at least 0.05 - 0.01 s late.
    _block_the_loop(0.05)
    await asyncio.sleep(0.03)
    task.cancel()
    await asyncio.wait({task})

    registry = metrics.registry
    count = registry.get_sample_value("event_loop_lag_seconds_count")
    below_25ms = registry.get_sample_value("event_loop_lag_seconds_bucket", {"le": "0.025"})
    assert count is not None
    assert below_25ms is not None
    assert count - below_25ms >= 1
    assert (registry.get_sample_value("event_loop_lag_seconds_sum") or 0.0) >= 0.04
    assert task.cancelled()


async def test_task_count_is_published() -> None:
    metrics = Metrics(process=False)
    monitor = LoopMonitor(metrics, interval=0.01)
    idle = [asyncio.create_task(asyncio.sleep(10)) for _ in range(5)]
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05)
    task.cancel()
    for t in idle:
        t.cancel()
    await asyncio.wait({task, *idle})

    # The test task, the monitor and the five sleepers.
    assert (metrics.registry.get_sample_value("asyncio_tasks") or 0) >= 7
    assert monitor.last_lag is not None
