"""The http.client module against a real local server: answers, errors, timeouts, metrics, circuit breaker."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from tests.modules.http.conftest import FakeClock, Serve
from workflow_engine.errors import CircuitOpenError, ModuleError, StepError, StepTimeoutError
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.http.client import SPEC, HttpClient, HttpClientConfig
from workflow_engine.observability.metrics import Metrics
from workflow_engine.runtime.circuit_breaker import BreakerState, CircuitBreakerConfig


class Upstream:
    """A real HTTP server with a few behaviours; counts the requests that reach it by path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.url = ""
        self.fail = True

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/ok", self.ok), ("GET", "/text", self.text), ("GET", "/flaky", self.flaky),
                ("GET", "/slow", self.slow), ("POST", "/echo", self.echo)]

    async def ok(self, request: Request) -> Response:
        self.hits["/ok"] += 1
        return JSONResponse({"ok": True, "query": dict(request.query_params)}, headers={"X-Upstream": "yes"})

    async def text(self, request: Request) -> Response:
        self.hits["/text"] += 1
        return PlainTextResponse("plain words")

    async def flaky(self, request: Request) -> Response:
        self.hits["/flaky"] += 1
        return JSONResponse({"broken": self.fail}, status_code=503 if self.fail else 200)

    async def slow(self, request: Request) -> Response:
        self.hits["/slow"] += 1
        await self.release.wait()
        return JSONResponse({"late": True})

    async def echo(self, request: Request) -> Response:
        self.hits["/echo"] += 1
        body = orjson.loads(await request.body())
        return JSONResponse({"body": body, "token": request.headers.get("x-token"),
                             "type": request.headers.get("content-type")})


@pytest.fixture
async def upstream(serve: Serve) -> AsyncIterator[Upstream]:
    target = Upstream()
    server, _ = await serve(target.routes(), name="upstream")
    target.url = f"http://127.0.0.1:{server.port}"
    yield target
    target.release.set()


@pytest.fixture
async def make_client(make_ctx: Callable[[str], ModuleContext],
                      clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    clients: list[HttpClient] = []

    async def make(name: str = "api", **config: Any) -> HttpClient:
        client = HttpClient(name, HttpClientConfig(**config), make_ctx(name), clock=clock)
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.stop()


def operations(metrics: Metrics, status: str, name: str = "api") -> float:
    labels = {"module": "http_client", "name": name, "operation": "request", "status": status}
    return metrics.registry.get_sample_value("module_operations_total", labels) or 0.0


def breaker_gauge(metrics: Metrics, name: str = "api") -> float | None:
    return metrics.registry.get_sample_value("circuit_breaker_state", {"module": "http_client", "name": name})


async def test_success_parses_json_and_is_counted(
    upstream: Upstream, make_client: Any, metrics: Metrics
) -> None:
    client = await make_client(base_url=upstream.url)

    response = await client.request("GET", "/ok", params={"page": 2})

    assert response.status == 200
    assert response.body == {"ok": True, "query": {"page": "2"}}
    assert response.headers["x-upstream"] == "yes"
    assert response.elapsed > 0
    assert operations(metrics, "success") == 1
    histogram = {"module": "http_client", "name": "api", "operation": "request"}
    assert metrics.registry.get_sample_value("module_operation_duration_seconds_count", histogram) == 1


async def test_a_query_in_the_url_is_kept_and_params_add_to_it(upstream: Upstream, make_client: Any) -> None:
    client = await make_client(base_url=upstream.url)

    alone = await client.request("GET", "/ok?q=1&r=2")
    empty = await client.request("GET", "/ok?q=1&r=2", params={})
    merged = await client.request("GET", "/ok?q=1&r=2", params={"r": "3", "z": 4})

    assert alone.body["query"] == empty.body["query"] == {"q": "1", "r": "2"}
    assert merged.body["query"] == {"q": "1", "r": "3", "z": "4"}


async def test_json_body_default_headers_and_text_answers(upstream: Upstream, make_client: Any) -> None:
    client = await make_client(base_url=upstream.url, headers={"X-Token": "t0k"})

    echoed = await client.request("POST", "/echo", json={"items": [1, 2]})
    text = await client.request("GET", "/text")

    assert echoed.body == {"body": {"items": [1, 2]}, "token": "t0k", "type": "application/json"}
    assert text.body == "plain words"


async def test_5xx_is_returned_and_counted_as_error(
    upstream: Upstream, make_client: Any, metrics: Metrics
) -> None:
    client = await make_client(base_url=upstream.url)

    response = await client.request("GET", "/flaky", operation="fetch")

    assert response.status == 503
    assert response.body == {"broken": True}
    labels = {"module": "http_client", "name": "api", "operation": "fetch", "status": "error"}
    assert metrics.registry.get_sample_value("module_operations_total", labels) == 1


async def test_timeout_raises_and_is_counted_as_timeout(
    upstream: Upstream, make_client: Any, metrics: Metrics
) -> None:
    client = await make_client(base_url=upstream.url)

    with pytest.raises(StepTimeoutError, match=r"module 'api' \(http.client\): GET .*/slow timed out"):
        await client.request("GET", "/slow", timeout=0.2)

    assert operations(metrics, "timeout") == 1
    assert operations(metrics, "error") == 0


async def test_connection_refused_is_a_step_error_naming_module_and_url(
    make_client: Any, metrics: Metrics
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await make_client()

    with pytest.raises(StepError, match=rf"module 'api' \(http.client\): GET http://127.0.0.1:{port}/x failed"
                       ) as caught:
        await client.request("GET", f"http://127.0.0.1:{port}/x?secret=1")

    assert caught.value.code == "http_error"
    assert "secret" not in caught.value.message
    assert operations(metrics, "error") == 1


async def test_breaker_opens_refuses_fast_then_recovers(
    upstream: Upstream, make_client: Any, clock: FakeClock, metrics: Metrics
) -> None:
    breaker = CircuitBreakerConfig(failure_threshold=2, reset_timeout="10s")
    client = await make_client(base_url=upstream.url, circuit_breaker=breaker)
    gauge = [breaker_gauge(metrics)]

    for _ in range(2):
        assert (await client.request("GET", "/flaky")).status == 503
    gauge.append(breaker_gauge(metrics))
    with pytest.raises(CircuitOpenError, match="circuit is open"):
        await client.request("GET", "/flaky")
    assert upstream.hits["/flaky"] == 2
    assert operations(metrics, "error") == 3

    clock.advance(10)
    assert client.breaker is not None
    assert client.breaker.state is BreakerState.HALF_OPEN
    gauge.append(breaker_gauge(metrics))
    upstream.fail = False
    assert (await client.request("GET", "/flaky")).status == 200
    gauge.append(breaker_gauge(metrics))

    assert gauge == [0, 2, 1, 0]
    assert client.describe()["circuit_breaker"]["state"] == "closed"


async def test_breaker_counts_timeouts_and_reopens_on_a_failed_trial(
    upstream: Upstream, make_client: Any, clock: FakeClock, metrics: Metrics
) -> None:
    breaker = CircuitBreakerConfig(failure_threshold=1, reset_timeout="5s")
    client = await make_client(base_url=upstream.url, circuit_breaker=breaker)

    with pytest.raises(StepTimeoutError):
        await client.request("GET", "/slow", timeout=0.1)
    assert breaker_gauge(metrics) == 2
    clock.advance(5)
    assert (await client.request("GET", "/flaky")).status == 503

    assert breaker_gauge(metrics) == 2
    with pytest.raises(CircuitOpenError):
        await client.request("GET", "/ok")
    assert upstream.hits["/ok"] == 0


async def test_standalone_client_serves_absolute_urls(upstream: Upstream, metrics: Metrics) -> None:
    client = HttpClient.standalone("default", HttpClientConfig(), metrics)
    await client.start()
    try:
        response = await client.request("GET", f"{upstream.url}/ok")
    finally:
        await client.stop()

    assert response.body["ok"] is True
    assert operations(metrics, "success", name="default") == 1


async def test_requests_need_a_started_client(metrics: Metrics) -> None:
    client = HttpClient.standalone("default", HttpClientConfig(), metrics)

    with pytest.raises(ModuleError, match="not started"):
        await client.request("GET", "http://127.0.0.1:1/")


async def test_invalid_url_and_body_are_step_errors(make_client: Any) -> None:
    client = await make_client()

    with pytest.raises(StepError, match="invalid URL"):
        await client.request("GET", "http://[::1")
    with pytest.raises(StepError, match="UnsupportedProtocol") as unsupported:
        await client.request("GET", "ftp://example.com/file")
    assert unsupported.value.code == "http_error"
    with pytest.raises(StepError, match="not JSON-serialisable") as caught:
        await client.request("POST", "http://127.0.0.1:1/", json={"when": object()})
    assert caught.value.code == "invalid_body"


def test_spec_describes_the_type() -> None:
    assert (SPEC.type, SPEC.kind, SPEC.config_model) == ("http.client", "http_client", HttpClientConfig)
    for name, field in HttpClientConfig.model_fields.items():
        assert field.description, name
