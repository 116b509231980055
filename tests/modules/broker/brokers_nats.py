"""Conformance fixture of `broker.nats`: the shared JetStream server (NATS_URL), and private servers to restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.js.errors

from tests.modules.broker.conformance import BrokerHarness, PrivateServer, free_port, process, unreachable, wait_port

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


def nats_config(ns: str, url: str = NATS_URL) -> dict[str, Any]:
    """A config whose own stream holds `<ns>.>` (memory storage, removed by `cleanup`)."""
    return {"url": url, "ack_wait": "2s",
            "stream": {"name": ns.upper(), "subjects": [f"{ns}.>"], "storage": "memory", "max_age": "10m"}}


def _config(ns: str) -> dict[str, Any]:
    parts = urlsplit(NATS_URL)
    unreachable("NATS", parts.hostname or "127.0.0.1", parts.port or 4222)
    return nats_config(ns)


async def cleanup(ns: str) -> None:
    """Delete the test's stream from the shared server."""
    nc = await nats.connect(NATS_URL)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):  # a stream the test never created
            await nc.jetstream().delete_stream(ns.upper())
    finally:
        await nc.close()


@asynccontextmanager
async def private_server(tmp: Path, ns: str) -> AsyncIterator[PrivateServer]:
    """nats-server -js on a free port with file storage in `tmp` (survives its own restart)."""
    port = free_port()
    args = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp / "js")]
    with ExitStack() as stack:
        current = stack.enter_context(process(args, tmp / "nats.log"))

        async def stop() -> None:
            current.terminate()
            await asyncio.to_thread(current.wait, 10)

        async def start() -> None:
            nonlocal current
            current = stack.enter_context(process(args, tmp / "nats.log"))
            await asyncio.to_thread(wait_port, port)

        await asyncio.to_thread(wait_port, port)
        config = nats_config(ns, f"nats://127.0.0.1:{port}")
        config["stream"]["storage"] = "file"
        yield PrivateServer(config, stop, start)


def harness() -> BrokerHarness:
    return BrokerHarness(type="broker.nats", config=_config, redelivery_wait=3.0, private_server=private_server,
                         cleanup=cleanup)
