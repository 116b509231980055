"""Background duties of a replica: heartbeat its leases, take over and wake executions, prune old ones."""

from __future__ import annotations

import asyncio
import time

import structlog

from workflow_engine.config.models import RetentionConfig
from workflow_engine.runtime.runtime import Runtime

log = structlog.get_logger("workflow_engine.maintenance")


async def heartbeat(runtime: Runtime, interval: float) -> None:
    """Extend the leases of every execution this replica holds, every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        ids = list(runtime.live)
        if not ids:
            continue
        try:
            await runtime.recorder.heartbeat(ids)
        except Exception as exc:  # the store is down: keep trying; leases may lapse and be taken over
            log.error("heartbeat failed", executions=len(ids), error=exc)


async def recover(runtime: Runtime, interval: float) -> None:
    """Take executions nobody holds (a replica died, a timer is due) and resume them here."""
    while True:
        try:
            await recover_once(runtime)
        except Exception as exc:  # the store is down: try again next round
            log.error("recovery round failed", error=exc)
        await asyncio.sleep(interval)


async def recover_once(runtime: Runtime) -> int:
    """One recovery round; returns how many executions were taken."""
    if not runtime.accepting:
        return 0
    room = sum(max(0, g.concurrency + g.queue_size - g.active - len(g.queue) - g.pending)
               for g in runtime.gates.values())
    if room <= 0:
        return 0
    records = await runtime.recorder.claim(min(room, 100))
    for record in records:
        await runtime.resume(record)
    return len(records)


async def prune(runtime: Runtime, config: RetentionConfig) -> None:
    """Delete finished executions older than `max_age`, a small batch at a time."""
    while True:
        await asyncio.sleep(config.interval)
        try:
            cutoff = time.time() - config.max_age
            while (deleted := await runtime.recorder.store.prune(cutoff, config.batch)) > 0:
                log.info("pruned finished executions", count=deleted)
                if deleted < config.batch:
                    break
                await asyncio.sleep(0)  # let requests run between batches
        except Exception as exc:
            log.error("pruning failed", error=exc)
