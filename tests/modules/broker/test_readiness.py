"""/readyz names a broker that is down and turns ready again when it is back, without restarting the engine;
the message trigger consumes again. Each broker runs on a private server this test stops and starts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import executions, running_engine, wait_until
from tests.modules.broker import brokers_nats, brokers_redis
from tests.modules.broker.conformance import FAST, unique
from workflow_engine.modules.broker.base import Broker

SERVERS = {"nats": brokers_nats.harness, "redis": brokers_redis.harness}


def _app(kind: str, config: dict[str, object], topic: str) -> str:
    return f"""\
version: 1
name: app
engine: {{shutdown_grace: 2s}}
modules:
  - name: orders-bus
    type: {kind}
    config: {json.dumps({**FAST, **config})}
workflows:
  consume:
    trigger: {{message: {{broker: orders-bus, topic: {topic}}}}}
    steps:
      - set: {{seen: "{{{{ input.body }}}}"}}
"""


@pytest.mark.parametrize("name", list(SERVERS))
async def test_readyz_follows_the_broker(name: str, tmp_path: Path) -> None:
    harness = SERVERS[name]()
    assert harness.private_server is not None
    ns = unique()
    async with harness.private_server(tmp_path, ns) as server, \
            running_engine(_app(harness.type, server.config, f"{ns}.jobs")) as engine:
        assert engine.management is not None
        bus = engine.modules["orders-bus"]
        assert isinstance(bus, Broker)
        async with httpx.AsyncClient(base_url=engine.management.url) as client:
            await _until(client, 200)
            await bus.publish(f"{ns}.jobs", 1)
            await wait_until(lambda: executions(engine.metrics, "consume", "success") == 1, "first message ran")

            await server.stop()
            body = await _until(client, 503)
            component = body["components"]["orders-bus"]
            assert component["state"] == "retrying"
            assert component["detail"]

            await server.start()
            await _until(client, 200)
            await bus.publish(f"{ns}.jobs", 2)
            await wait_until(lambda: executions(engine.metrics, "consume", "success") == 2, "consuming again")


async def _until(client: httpx.AsyncClient, status: int, limit: float = 30.0) -> dict[str, Any]:
    """Poll /readyz until it answers `status`; its body."""
    async with asyncio.timeout(limit):
        while True:
            answer = await client.get("/readyz")
            if answer.status_code == status:
                body: dict[str, Any] = answer.json()
                return body
            await asyncio.sleep(0.05)
