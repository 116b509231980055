"""Event loop lag and live task count, sampled on the loop itself (blocking code shows up as lag)."""

from __future__ import annotations

import asyncio

from workflow_engine.observability.metrics import Metrics


class LoopMonitor:
    """Samples `event_loop_lag_seconds` and `asyncio_tasks` every `interval` seconds until cancelled."""

    def __init__(self, metrics: Metrics, interval: float = 0.25) -> None:
        if interval <= 0:
            raise ValueError(f"loop monitor interval must be positive, got {interval!r}")
        self._metrics = metrics
        self.interval = interval
        self.last_lag: float | None = None

    async def run(self) -> None:
        """Sample forever; the owner cancels the task to stop it."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            # Anything beyond the requested sleep is time the loop spent unable to run ready callbacks.
            self._record(max(0.0, loop.time() - started - self.interval))

    def _record(self, lag: float) -> None:
        # Called on the loop: all_tasks() needs the running loop.
        self.last_lag = lag
        self._metrics.event_loop_lag.observe(lag)
        self._metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
