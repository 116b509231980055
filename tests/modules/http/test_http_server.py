"""The http.server module against real sockets: routing, errors, body limits, metrics, lifecycle."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from structlog.testing import capture_logs

from tests.modules.http.conftest import Serve, duration_count, requests_total
from workflow_engine.errors import ModuleError, ValidationFailedError
from workflow_engine.modules.base import ModuleContext
from workflow_engine.modules.http.middleware import MiddlewareConfig
from workflow_engine.modules.http.server import SPEC, HttpServer, HttpServerConfig, read_body
from workflow_engine.observability.logging import merge_log_context
from workflow_engine.observability.metrics import Metrics


async def item(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["id"]})


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def test_route_with_path_params_is_served_and_counted_by_template(
    serve: Serve, metrics: Metrics
) -> None:
    _, client = await serve([("GET", "/items/{id}", item)])

    response = await client.get("/items/42")

    assert response.status_code == 200
    assert response.json() == {"id": "42"}
    labels = {"server": "web", "method": "GET", "path": "/items/{id}"}
    assert requests_total(metrics, **labels, status_code="200") == 1
    assert duration_count(metrics, **labels) == 1
    assert requests_total(metrics, server="web", method="GET", path="/items/42", status_code="200") == 0


async def test_static_route_and_head_for_get(serve: Serve, metrics: Metrics) -> None:
    _, client = await serve([("GET", "/health", item_static)])

    assert (await client.get("/health")).json() == {"ok": True}
    head = await client.head("/health")

    assert head.status_code == 200
    assert head.content == b""
    assert requests_total(metrics, server="web", method="HEAD", path="/health", status_code="200") == 1


async def item_static(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def test_unmatched_path_is_404_json_counted_as_unmatched(serve: Serve, metrics: Metrics) -> None:
    _, client = await serve([("GET", "/items/{id}", item)])

    response = await client.get("/nothing/here")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no route for GET /nothing/here"}}
    assert requests_total(metrics, server="web", method="GET", path="unmatched", status_code="404") == 1
    assert "x-request-id" in response.headers


async def test_odd_methods_share_one_label(serve: Serve, metrics: Metrics) -> None:
    _, client = await serve([("GET", "/items/{id}", item)])

    response = await client.request("PROPFIND", "/coffee")

    assert response.status_code == 404
    assert requests_total(metrics, server="web", method="other", path="unmatched", status_code="404") == 1


async def test_wrong_method_is_405_counted_with_template(serve: Serve, metrics: Metrics) -> None:
    _, client = await serve([("GET", "/items/{id}", item), ("PUT", "/items/{id}", item)])

    response = await client.delete("/items/7")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, HEAD, PUT"
    assert requests_total(metrics, server="web", method="DELETE", path="/items/{id}", status_code="405") == 1


async def test_body_over_limit_with_content_length_is_413_before_the_endpoint(serve: Serve) -> None:
    calls = 0

    async def counting(request: Request) -> Response:
        nonlocal calls
        calls += 1
        return await echo(request)

    _, client = await serve([("POST", "/echo", counting, MiddlewareConfig(max_body_size=1024))])

    small = await client.post("/echo", content=b"x" * 1024)
    big = await client.post("/echo", content=b"x" * 1025)

    assert small.status_code == 200
    assert small.content == b"x" * 1024
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "body_too_large"
    assert calls == 1


async def test_chunked_body_over_limit_is_413_while_streaming(serve: Serve, metrics: Metrics) -> None:
    _, client = await serve([("POST", "/echo", echo)], max_body_size="1KB")

    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"y" * 400

    ok = await client.post("/echo", content=chunks(2))
    too_big = await client.post("/echo", content=chunks(3))

    assert ok.status_code == 200
    assert ok.content == b"y" * 800
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "body_too_large"
    assert requests_total(metrics, server="web", method="POST", path="/echo", status_code="413") == 1


async def test_endpoint_exception_is_500_json_and_logged_with_traceback(
    serve: Serve, metrics: Metrics
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("database password is hunter2")

    _, client = await serve([("GET", "/broken", broken)])

    with capture_logs(processors=[merge_log_context]) as logs:
        response = await client.get("/broken")

    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert "hunter2" not in response.text
    failure = next(entry for entry in logs if entry["event"] == "endpoint_failed")
    assert failure["exc_info"] is True
    assert failure["route"] == "GET /broken"
    assert failure["request_id"] == response.headers["x-request-id"]
    assert requests_total(metrics, server="web", method="GET", path="/broken", status_code="500") == 1


async def test_engine_errors_keep_their_status_and_code(serve: Serve) -> None:
    async def invalid(request: Request) -> Response:
        raise ValidationFailedError("body.items: is required")

    _, client = await serve([("POST", "/orders", invalid)])

    response = await client.post("/orders", json={})

    assert response.status_code == 400
    assert response.json() == {"error": {"code": "validation_failed", "message": "body.items: is required"}}


async def test_port_zero_reports_the_real_port(serve: Serve) -> None:
    server, client = await serve([("GET", "/items/{id}", item)])

    assert server.port != 0
    assert server.describe() == {"address": f"127.0.0.1:{server.port}"}
    assert (await client.get("/items/1")).status_code == 200


async def test_bind_error_names_module_and_address(
    serve: Serve, make_ctx: Callable[[str], ModuleContext]
) -> None:
    first, _ = await serve([])
    address = f"127.0.0.1:{first.port}"
    second = HttpServer("api", HttpServerConfig(address=address), make_ctx("api"))

    with pytest.raises(ModuleError, match=rf"module 'api' \(http.server\): cannot listen on {address}"):
        await second.start()


async def test_routes_are_unique_and_fixed_at_start(
    serve: Serve, make_ctx: Callable[[str], ModuleContext]
) -> None:
    server = HttpServer("web", HttpServerConfig(address="127.0.0.1:0"), make_ctx("web"))
    server.add_route("get", "/items/{id}", item)

    with pytest.raises(ModuleError, match=r"route GET /items/\{id\} is already registered"):
        server.add_route("GET", "/items/{id}", item)
    with pytest.raises(ModuleError, match="must start with '/'"):
        server.add_route("GET", "items", item)

    started, _ = await serve([("GET", "/a", item)])
    with pytest.raises(ModuleError, match="added after the server started"):
        started.add_route("GET", "/b", item)


async def test_serving_does_not_take_over_signals(serve: Serve) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    _, client = await serve([("GET", "/items/{id}", item)])
    await client.get("/items/1")

    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


async def test_stop_lets_an_in_flight_request_finish(make_ctx: Callable[[str], ModuleContext]) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return JSONResponse({"done": True})

    config = HttpServerConfig(address="127.0.0.1:0", shutdown_timeout="5s")
    server = HttpServer("web", config, make_ctx("web"))
    server.add_route("GET", "/slow", slow)
    await server.start()
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(client.get(f"http://127.0.0.1:{server.port}/slow"))
        await entered.wait()
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()
        release.set()
        response = await pending
        await stopping

    assert response.json() == {"done": True}


def test_config_validates_address() -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        HttpServerConfig(address="localhost")
    with pytest.raises(ValidationError, match="HOST:PORT"):
        HttpServerConfig(address="0.0.0.0:70000")
    assert HttpServerConfig(address="[::1]:0").address == "[::1]:0"
    assert HttpServerConfig(max_body_size="2Mi").max_body_size == 2 * 1024 * 1024


def test_spec_describes_the_type() -> None:
    assert (SPEC.type, SPEC.kind, SPEC.config_model) == ("http.server", "http_server", HttpServerConfig)
    for name, field in HttpServerConfig.model_fields.items():
        assert field.description, name


async def test_access_log_is_opt_in(serve: Serve) -> None:
    _, quiet = await serve([("GET", "/items/{id}", item)])
    _, loud = await serve([("GET", "/items/{id}", item)], name="loud", access_log=True)

    with capture_logs() as logs:
        await quiet.get("/items/1")
        await loud.get("/items/2")

    lines = [entry for entry in logs if entry["event"] == "http_request"]
    assert len(lines) == 1
    assert lines[0]["server"] == "loud"
    assert (lines[0]["path"], lines[0]["route"], lines[0]["status_code"]) == ("/items/2", "/items/{id}", 200)


async def test_read_body_joins_chunks_caches_the_body_and_raises_on_disconnect() -> None:
    def request(*messages: dict[str, Any]) -> Request:
        queue = list(messages)

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)

    chunked = request({"type": "http.request", "body": b"ab", "more_body": True},
                      {"type": "http.request", "body": b"", "more_body": True},
                      {"type": "http.request", "body": b"c"})
    assert await read_body(chunked) == b"abc"
    assert await chunked.body() == b"abc"  # Starlette's own reader sees it read
    assert await read_body(chunked) == b"abc"
    assert await read_body(request({"type": "http.request"})) == b""
    gone = request({"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnect):
        await read_body(gone)
    assert await gone.is_disconnected()
