"""Fixtures: real `http.server` modules on port 0, httpx clients against them, a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.factories import TaskOwner
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.http.middleware import Endpoint, MiddlewareConfig
from workflow_engine.modules.http.server import HttpServer, HttpServerConfig
from workflow_engine.observability.metrics import Metrics


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds




Route = tuple[str, str, Endpoint] | tuple[str, str, Endpoint, MiddlewareConfig | None]
Serve = Callable[..., Awaitable[tuple[HttpServer, httpx.AsyncClient]]]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def tasks() -> AsyncIterator[TaskOwner]:
    owner = TaskOwner()
    yield owner
    await owner.close()


@pytest.fixture
def make_ctx(metrics: Metrics, tasks: TaskOwner) -> Callable[[str], ModuleContext]:
    def make(name: str) -> ModuleContext:
        return ModuleContext(name=name, metrics=metrics, modules={}, spawn_task=tasks.spawn)

    return make


@pytest.fixture
async def serve(make_ctx: Callable[[str], ModuleContext], clock: FakeClock) -> AsyncIterator[Serve]:
    """Start an HttpServer on 127.0.0.1:0 with `routes`; returns it and an httpx client bound to it."""
    servers: list[HttpServer] = []
    clients: list[httpx.AsyncClient] = []

    async def start(
        routes: list[Route], name: str = "web", **config: Any
    ) -> tuple[HttpServer, httpx.AsyncClient]:
        server_config = HttpServerConfig(address="127.0.0.1:0", **config)
        server = HttpServer(name, server_config, make_ctx(name), clock=clock)
        for route in routes:
            server.add_route(*route)
        await server.start()
        servers.append(server)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}")
        clients.append(client)
        return server, client

    yield start
    for client in clients:
        await client.aclose()
    for server in servers:
        await server.stop()


def requests_total(metrics: Metrics, **labels: str) -> float:
    """`http_requests_total` for exactly these labels (0 when the series does not exist)."""
    return metrics.registry.get_sample_value("http_requests_total", labels) or 0.0


def duration_count(metrics: Metrics, **labels: str) -> float:
    """Observations of `http_request_duration_seconds` for these labels."""
    return metrics.registry.get_sample_value("http_request_duration_seconds_count", labels) or 0.0
