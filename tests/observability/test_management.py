"""A real ManagementServer on a free port: health, readiness, metrics, request counting, lifecycle."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workflow_engine.modules.base import ModuleState
from workflow_engine.observability.health import Health
from workflow_engine.observability.management import ManagementError, ManagementServer
from workflow_engine.observability.metrics import Metrics


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
async def server(metrics: Metrics, health: Health) -> AsyncIterator[ManagementServer]:
    async with ManagementServer("127.0.0.1:0", metrics, health) as srv:
        yield srv


@pytest.fixture
async def client(server: ManagementServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as c:
        yield c


def _requests(metrics: Metrics, method: str, path: str, status: int) -> float:
    labels = {"server": "management", "method": method, "path": path, "status_code": str(status)}
    return metrics.registry.get_sample_value("http_requests_total", labels) or 0.0


async def test_port_zero_binds_a_real_port(server: ManagementServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("path", ["/healthz", "/livez"])
async def test_liveness(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readiness_follows_component_states(client: httpx.AsyncClient, health: Health) -> None:
    health.set_component("web", "http_server", ModuleState.READY)
    health.set_component("db", "database", ModuleState.RETRYING, "connection refused")

    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["components"]["db"] == {
        "kind": "database", "state": "retrying", "detail": "connection refused",
    }

    health.set_component("db", "database", ModuleState.READY)
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"

    health.set_draining(True)
    draining = await client.get("/readyz")
    assert draining.status_code == 503
    assert draining.json()["draining"] is True


async def test_metrics_exposes_the_registry_and_counts_requests(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    await client.get("/healthz")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "http_requests_total{" in response.text
    samples = [s for f in text_string_to_metric_families(response.text) for s in f.samples]
    healthz = [s for s in samples if s.name == "http_requests_total" and s.labels.get("path") == "/healthz"]
    assert [(s.labels["server"], s.labels["status_code"], s.value) for s in healthz] == [
        ("management", "200", 1.0)
    ]
    assert any(s.name == "process_resident_memory_bytes" for s in samples)
    duration = metrics.registry.get_sample_value(
        "http_request_duration_seconds_count", {"server": "management", "method": "GET", "path": "/healthz"}
    )
    assert duration == 1.0


async def test_unmatched_path_is_a_json_404_counted_as_unmatched(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    response = await client.get("/orders/42")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no route for GET /orders/42"}}
    assert _requests(metrics, "GET", "unmatched", 404) == 1.0
    assert _requests(metrics, "GET", "/orders/42", 404) == 0.0


async def test_wrong_method_is_counted_on_the_route(client: httpx.AsyncClient, metrics: Metrics) -> None:
    response = await client.post("/readyz")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]
    assert _requests(metrics, "POST", "/readyz", 405) == 1.0


async def test_added_routes_and_mounts_are_served_and_labelled_by_template(
    metrics: Metrics, health: Health
) -> None:
    async def item(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"]})

    async def version(_request: Request) -> Response:
        return JSONResponse({"version": "1"})

    server = ManagementServer("127.0.0.1:0", metrics, health)
    server.mount("/api", Starlette(routes=[Route("/items/{id}", item)]))
    server.add_route("/version", version)
    async with server, httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        assert (await client.get("/api/items/7")).json() == {"id": "7"}
        assert (await client.get("/version")).json() == {"version": "1"}
        assert (await client.get("/api/nothing")).status_code == 404

    assert _requests(metrics, "GET", "/api/items/{id}", 200) == 1.0
    assert _requests(metrics, "GET", "/version", 200) == 1.0
    assert _requests(metrics, "GET", "unmatched", 404) == 1.0


async def test_a_failing_endpoint_answers_json_500_and_is_counted(metrics: Metrics, health: Health) -> None:
    async def broken(_request: Request) -> Response:
        raise RuntimeError("secret detail")

    server = ManagementServer("127.0.0.1:0", metrics, health)
    server.add_route("/broken", broken)
    async with server, httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        response = await client.get("/broken")

    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "GET /broken failed"}}
    assert _requests(metrics, "GET", "/broken", 500) == 1.0


async def test_port_in_use_is_a_clear_error(
    server: ManagementServer, metrics: Metrics, health: Health
) -> None:
    address = f"127.0.0.1:{server.port}"
    with pytest.raises(ManagementError, match=f"cannot listen on '{address}'"):
        await ManagementServer(address, metrics, health).start()


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:http", "127.0.0.1:70000"])
def test_invalid_address_is_rejected(address: str, metrics: Metrics, health: Health) -> None:
    with pytest.raises(ManagementError, match="invalid address"):
        ManagementServer(address, metrics, health)


async def test_starting_twice_is_an_error(server: ManagementServer) -> None:
    with pytest.raises(ManagementError, match="already started"):
        await server.start()


async def test_signal_handlers_are_left_to_the_engine(metrics: Metrics, health: Health) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    async with ManagementServer("127.0.0.1:0", metrics, health):
        assert {sig: signal.getsignal(sig) for sig in before} == before


async def test_stop_is_prompt_and_releases_the_port(metrics: Metrics, health: Health) -> None:
    server = ManagementServer("127.0.0.1:0", metrics, health)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        # An idle keep-alive connection must not hold shutdown up.
        assert (await client.get("/healthz")).status_code == 200
        async with asyncio.timeout(3):
            await server.stop()
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
    await server.stop()


async def test_stop_lets_an_in_flight_request_finish(metrics: Metrics, health: Health) -> None:
    entered = asyncio.Event()

    async def slow(_request: Request) -> Response:
        entered.set()
        await asyncio.sleep(0.2)
        return JSONResponse({"done": True})

    server = ManagementServer("127.0.0.1:0", metrics, health)
    server.add_route("/slow", slow)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        request = asyncio.create_task(client.get("/slow"))
        await entered.wait()
        await server.stop()
        response = await request

    assert response.json() == {"done": True}


async def test_stop_cancels_requests_that_outlive_the_grace_period(metrics: Metrics, health: Health) -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(_request: Request) -> Response:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return JSONResponse({})

    server = ManagementServer("127.0.0.1:0", metrics, health, shutdown_timeout=1)
    server.add_route("/endless", endless)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        request = asyncio.create_task(client.get("/endless"))
        await entered.wait()
        async with asyncio.timeout(5):
            await server.stop()
        assert cancelled.is_set()
        # uvicorn answers a request cancelled before it responded with a 500.
        assert (await request).status_code == 500
    assert _requests(metrics, "GET", "/endless", 500) == 1.0
