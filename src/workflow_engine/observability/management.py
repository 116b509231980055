"""The management server: health, readiness and metrics endpoints (DESIGN.md §2.3), with room for `/api`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workflow_engine.errors import ModuleError
from workflow_engine.observability.health import Health
from workflow_engine.observability.logging import get_logger
from workflow_engine.observability.metrics import Metrics

SERVER_LABEL = "management"
UNMATCHED = "unmatched"

# Methods outside this set share one label value, so odd clients cannot grow the metric's label set.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1"}

log = get_logger("workflow_engine.management")


class ManagementError(ModuleError):
    """The management server could not start or stop (bad address, port in use)."""

    code = "management_error"


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str | None:
    """The template of the route Starlette dispatches `scope` to (mount prefixes included); None when none."""
    partial: str | None = None
    for route in routes:
        match, child_scope = route.matches(scope)
        if match is Match.FULL:
            return _template_of(route, {**scope, **child_scope})
        if match is Match.PARTIAL and partial is None:
            partial = _template_of(route, {**scope, **child_scope})
    return partial


def _template_of(route: BaseRoute, scope: Scope) -> str | None:
    if isinstance(route, Mount):
        if not route.routes:
            # A mounted app without a router (static files, a bare ASGI app): its whole subtree is one route.
            return route.path_format
        inner = route_template(route.routes, scope)
        return None if inner is None else route.path + inner
    if isinstance(route, Route | WebSocketRoute):
        return route.path_format
    return None


class RequestMetrics:
    """ASGI middleware counting every HTTP request and its duration, labelled by route template."""

    def __init__(
        self, app: ASGIApp, routes: Callable[[], Sequence[BaseRoute]], metrics: Metrics, server: str
    ) -> None:
        self._app = app
        self._routes = routes
        self._metrics = metrics
        self._server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = route_template(self._routes(), scope) or UNMATCHED
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
        # An app that fails before answering is answered 500 by the server, so that is what we count.
        status = 500

        async def send_and_capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self._app(scope, receive, send_and_capture)
        finally:
            self._metrics.http_requests.labels(self._server, method, path, str(status)).inc()
            self._metrics.http_request_duration.labels(self._server, method, path).observe(
                time.perf_counter() - started
            )


def parse_address(address: str) -> tuple[str, int]:
    """Host and port of `HOST:PORT` (`[::1]:8081` for IPv6, `:8081` for every interface)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ManagementError(f"management server: invalid address {address!r}; expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the engine and reports when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would install its own SIGINT/SIGTERM handlers; the engine owns signals and drains first.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set_result(None)


class ManagementServer:
    """Serves `/healthz`, `/livez`, `/readyz` and `/metrics`; routes and mounts may be added before start."""

    def __init__(
        self,
        address: str,
        metrics: Metrics,
        health: Health,
        *,
        routes: Sequence[BaseRoute] = (),
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.address = address
        self._host, self._requested_port = parse_address(address)
        self._metrics = metrics
        self._health = health
        # Whole seconds: uvicorn's graceful-shutdown timeout is an int.
        self._grace = max(1, math.ceil(shutdown_timeout))
        self.app = Starlette(
            routes=[*self._builtin_routes(), *routes],
            exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        )
        self._asgi = RequestMetrics(self.app, lambda: self.app.routes, metrics, SERVER_LABEL)
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    def add_route(
        self, path: str, endpoint: Callable[[Request], Awaitable[Response]], methods: Sequence[str] = ("GET",)
    ) -> None:
        """Serve `endpoint` at `path`; call before `start`."""
        self.app.router.routes.append(Route(path, endpoint, methods=list(methods)))

    def mount(self, path: str, app: ASGIApp) -> None:
        """Serve the ASGI `app` under `path` (the management API under `/api`); call before `start`."""
        self.app.router.routes.append(Mount(path, app=app))

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when the address asked for port 0)."""
        if self._port is None:
            raise ManagementError(f"management server on {self.address!r} is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL clients reach the server at (loopback when listening on every interface)."""
        host = _WILDCARD_HOSTS.get(self._host, self._host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind the address and serve; returns once the server is listening."""
        if self._task is not None:
            raise ManagementError(f"management server on {self.address!r} is already started")
        self._socket = self._bind()
        self._port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self._asgi, host=self._host, port=self.port, lifespan="off", log_config=None, access_log=False,
            interface="asgi3", timeout_graceful_shutdown=self._grace,
        )
        self._server = server = _EmbeddedServer(config)
        serve = server.serve(sockets=[self._socket])
        self._task = task = asyncio.create_task(serve, name="management-server")
        try:
            await asyncio.wait({task, server.listening}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self._abort()
            raise
        if not server.listening.done():
            await self._abort()
            failure = _failure(task)
            raise ManagementError(f"management server on {self.address!r} failed to start") from failure
        log.info("management server listening", url=self.url)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the shutdown timeout, then cancel the rest."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        # uvicorn bounds the graceful part itself; the margin covers its fixed sleeps and main-loop tick.
        await asyncio.wait({task}, timeout=self._grace + 1.0)
        if not task.done():
            server.force_exit = True
            task.cancel()
            await asyncio.wait({task})
        # uvicorn cancels requests that outlive its grace period but does not wait for them to unwind.
        stragglers = set(server.server_state.tasks)
        if stragglers:
            await asyncio.wait(stragglers, timeout=1.0)
        self._task = self._server = None
        failure = _failure(task)
        if failure is not None:
            raise ManagementError(f"management server on {self.address!r} failed while serving") from failure
        log.info("management server stopped", address=self.address)

    async def __aenter__(self) -> ManagementServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            return socket.create_server((self._host, self._requested_port), family=family)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ManagementError(f"management server: cannot listen on {self.address!r}: {reason}") from exc

    async def _abort(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if self._socket is not None:
            self._socket.close()
        self._task = self._server = None

    def _builtin_routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self._liveness, methods=["GET"]),
            Route("/livez", self._liveness, methods=["GET"]),
            Route("/readyz", self._readiness, methods=["GET"]),
            # Sync, so Starlette runs it in its thread pool: collecting a big registry never blocks the loop.
            Route("/metrics", self._metrics_text, methods=["GET"]),
        ]

    async def _liveness(self, _request: Request) -> Response:
        return JSONResponse(self._health.liveness())

    async def _readiness(self, _request: Request) -> Response:
        ready, body = self._health.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    def _metrics_text(self, _request: Request) -> Response:
        return Response(generate_latest(self._metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    code = _ERROR_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    else:
        message = f"{request.method} {request.url.path}: {exc.detail}"
    body = {"error": {"code": code, "message": message}}
    # Keeps headers such as `Allow` on 405.
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, _exc: Exception) -> Response:
    # The traceback goes to the log (uvicorn logs the re-raised exception), never to the client.
    body = {"error": {"code": "internal_error", "message": f"{request.method} {request.url.path} failed"}}
    return JSONResponse(body, status_code=500)


def _failure(task: asyncio.Task[Any]) -> BaseException | None:
    """The exception `task` ended with, if any (cancellation is the owner's doing, not a failure)."""
    if not task.done() or task.cancelled():
        return None
    return task.exception()
