"""Conformance fixture of `broker.redis`: the shared Redis (REDIS_URL), and private servers to restart."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from tests.modules.broker.conformance import BrokerHarness, PrivateServer, free_port, process, unreachable, wait_port

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_config(url: str = REDIS_URL) -> dict[str, Any]:
    return {"url": url, "claim_idle": "1500ms"}


def _config(ns: str) -> dict[str, Any]:
    parts = urlsplit(REDIS_URL)
    unreachable("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    return redis_config()


async def cleanup(ns: str) -> None:
    """Delete the test's streams from the shared server."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{ns}.*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def private_server(tmp: Path, ns: str) -> AsyncIterator[PrivateServer]:
    """redis-server on a free port with an append-only file in `tmp` (its streams survive its own restart)."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--dir", str(tmp)]
    with ExitStack() as stack:
        current = stack.enter_context(process(args, tmp / "redis.log"))

        async def stop() -> None:
            current.terminate()
            await asyncio.to_thread(current.wait, 10)

        async def start() -> None:
            nonlocal current
            current = stack.enter_context(process(args, tmp / "redis.log"))
            await asyncio.to_thread(wait_port, port)

        await asyncio.to_thread(wait_port, port)
        yield PrivateServer(redis_config(f"redis://127.0.0.1:{port}/0"), stop, start)


def harness() -> BrokerHarness:
    return BrokerHarness(type="broker.redis", config=_config, redelivery_wait=3.0, private_server=private_server,
                         cleanup=cleanup)
