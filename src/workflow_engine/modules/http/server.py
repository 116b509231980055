"""The `http.server` module: user routes on Starlette routing, served by uvicorn inside the engine's loop.

Everything a request needs is built once in `start()`: per route and method a `_Handler` holding the wrapped
endpoint and its metric children, per path template a `_PathApp` dispatching on the method, and a dict of the
static paths so most requests skip the regex routing entirely (a static path thus wins over a template that
also matches it). Middleware merge rule: a route's `MiddlewareConfig` replaces, field by field, each field it
sets explicitly (including setting one to null to turn it off); fields it leaves unset come from the server's
`middleware`. The body limit is the merged `max_body_size`, else the server's `max_body_size`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn
from pydantic import Field, field_validator
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, Router, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from workflow_engine.config.models import Strict
from workflow_engine.durations import ByteSize, Duration
from workflow_engine.errors import ModuleError
from workflow_engine.modules.base import Module, ModuleContext
from workflow_engine.modules.http.middleware import (
    Clock,
    Endpoint,
    MiddlewareConfig,
    json_error,
    merge_middleware,
    wrap_endpoint,
)
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.specs import ModuleSpec

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_log = structlog.get_logger("workflow_engine.http")


def split_address(address: str) -> tuple[str, int]:
    """HOST and PORT of `HOST:PORT` (IPv6 hosts in brackets: `[::1]:8080`)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid address {address!r}: use HOST:PORT with a port from 0 to 65535")
    return host.removeprefix("[").removesuffix("]"), int(port)


class HttpServerConfig(Strict):
    """An HTTP server for workflow routes."""

    address: str = Field("0.0.0.0:8080", description="HOST:PORT to listen on; port 0 picks a free port.")
    max_body_size: ByteSize = Field(1024 * 1024, ge=0, description="Largest request body (413 above).")
    middleware: MiddlewareConfig = Field(
        default_factory=MiddlewareConfig,
        description="Defaults for every route; a route's own middleware replaces each field it sets.",
    )
    access_log: bool = Field(False, description="Log one line per request.")
    shutdown_timeout: Duration = Field(
        10.0, description="How long stopping waits for in-flight requests (whole seconds, rounded up)."
    )
    body_timeout: Duration = Field(
        30.0, gt=0, description="How long a client may take to send a request body (then 408, connection closed)."
    )
    forwarded_allow_ips: list[str] = Field(
        default_factory=list,
        description="Proxy addresses trusted for X-Forwarded-For/-Proto (client IP of rate limits and logs).",
    )

    @field_validator("address")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        split_address(value)
        return value


@dataclass(frozen=True)
class _RouteDecl:
    endpoint: Endpoint
    middleware: MiddlewareConfig | None


class _Handler:
    """One method of one route: runs the wrapped endpoint, sends the answer, counts it."""

    __slots__ = ("_access_log", "_by_status", "_duration", "_endpoint", "_labels", "_requests")

    def __init__(
        self, endpoint: Endpoint, metrics: Metrics, labels: tuple[str, str, str], access_log: bool
    ) -> None:
        self._endpoint = endpoint
        self._labels = labels
        self._requests = metrics.http_requests
        self._by_status: dict[int, Any] = {}
        self._duration = metrics.http_request_duration.labels(*labels)
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500
        try:
            try:
                response = await self._endpoint(Request(scope, receive))
            except Exception:
                # Endpoints are already guarded; this only catches a failing middleware.
                _log.error("middleware_failed", server=self._labels[0], route=self._labels[2], exc_info=True)
                response = json_error(500, "internal_error", "internal server error")
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self._count(status, time.perf_counter() - start, scope)

    def _count(self, status: int, seconds: float, scope: Scope) -> None:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._requests.labels(*self._labels, str(status))
        counter.inc()
        self._duration.observe(seconds)
        if self._access_log:
            _log.info("http_request", server=self._labels[0], method=scope["method"], path=scope["path"],
                      route=self._labels[2], status_code=status, duration_ms=round(seconds * 1000, 3))


class BodyDeadlines:
    """Requests still receiving their body and by when they must have it: a sweeper cancels the late reads.

    One dict entry per request instead of a timer per request (`asyncio.timeout` costs ~4 µs a request; most
    bodies are complete when the request starts). A late read ends up to a quarter of the timeout (at most
    a second) after its deadline.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._late: set[asyncio.Task[Any]] = set()

    async def read(self, request: Request) -> bytes | None:
        """The request's body; None when it did not arrive in time."""
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = time.monotonic() + self.timeout
        try:
            return await read_body(request)
        except asyncio.CancelledError:
            if task not in self._late:
                raise
            task.uncancel()
            return None
        finally:
            self._reading.pop(task, None)
            self._late.discard(task)  # also when the read ended otherwise after all

    async def sweep(self) -> None:
        """Cancel the reads past their deadline; runs until cancelled."""
        interval = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(interval)
            if not self._reading:
                continue
            now = time.monotonic()
            for task, deadline in list(self._reading.items()):
                if deadline < now and task not in self._late:
                    self._late.add(task)
                    task.cancel()


async def read_body(request: Request) -> bytes:
    """`await request.body()` without its async generator: most bodies are one message. Leaves the request
    as Starlette's `body()` does (the body cached for later `body()`/`json()` calls, the stream consumed,
    ClientDisconnect when the client went away)."""
    if hasattr(request, "_body") or request._stream_consumed:  # read before (by middleware): Starlette's way
        return await request.body()
    chunks: list[bytes] = []
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                body = b"".join([*chunks, chunk]) if chunks else chunk
                break
            chunks.append(chunk)
        elif message["type"] == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()
    request._stream_consumed = True
    request._body = body
    return body


class _Fallbacks:
    """404 and 405 handlers, created per (method label, path label) on first use."""

    def __init__(self, server: str, metrics: Metrics, middleware: MiddlewareConfig, access_log: bool) -> None:
        self._server = server
        self._metrics = metrics
        # Error answers still carry the request id and security headers, but nothing route-specific.
        self._middleware = MiddlewareConfig(
            request_id=middleware.request_id, security_headers=middleware.security_headers
        )
        self._access_log = access_log
        self._handlers: dict[tuple[str, str], _Handler] = {}

    def get(self, method: str, path: str, endpoint: Endpoint) -> _Handler:
        label = method if method in _KNOWN_METHODS else "other"
        handler = self._handlers.get((label, path))
        if handler is None:
            wrapped = wrap_endpoint(endpoint, self._middleware)
            handler = _Handler(wrapped, self._metrics, (self._server, label, path), self._access_log)
            self._handlers[(label, path)] = handler
        return handler

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.get(scope["method"], "unmatched", _not_found)(scope, receive, send)


async def _not_found(request: Request) -> Response:
    return json_error(404, "not_found", f"no route for {request.method} {request.url.path[:200]}")


class _PathApp:
    """Every method of one path template; unknown methods get 405 and CORS preflights their method's chain."""

    def __init__(self, template: str, handlers: dict[str, _Handler], preflight: dict[str, _Handler],
                 fallbacks: _Fallbacks) -> None:
        self._template = template
        self._handlers = handlers
        self._preflight = preflight
        self._fallbacks = fallbacks
        allowed = ", ".join(sorted(handlers))
        message = f"allowed methods on {template}: {allowed}"

        async def not_allowed(request: Request) -> Response:
            return json_error(405, "method_not_allowed", f"{request.method} not allowed; {message}",
                              {"Allow": allowed})

        self._not_allowed = not_allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope)(scope, receive, send)

    def handler(self, scope: Scope) -> _Handler:
        """The handler of the request's method (405, or a CORS preflight, for the others)."""
        method = scope["method"]
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._fallback(scope, method)
        return handler

    def _fallback(self, scope: Scope, method: str) -> _Handler:
        if method == "OPTIONS" and self._preflight:
            for key, value in scope["headers"]:
                if key == b"access-control-request-method":
                    handler = self._preflight.get(value.decode("latin-1").upper())
                    if handler is not None:
                        return handler
        return self._fallbacks.get(method, self._template, self._not_allowed)


class _App:
    """The ASGI app: static paths by dict lookup, templates through the Starlette router.

    `swap` replaces its routes in place (a config apply): requests in flight finish on the handlers they
    started with; uvicorn keeps calling this same object."""

    def __init__(self, static: dict[str, _PathApp], router: Router) -> None:
        self._static = static
        self._router = router

    def swap(self, other: _App) -> None:
        self._static, self._router = other._static, other._router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._static.get(scope["path"])
        if app is None:
            await self._router(scope, receive, send)
        else:
            await app.handler(scope)(scope, receive, send)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers (the engine owns signals) and with a readiness event."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class HttpServer(Module):
    """Serves the routes that triggers register, with metrics, middleware and JSON errors."""

    kind = "http_server"

    def __init__(self, name: str, config: HttpServerConfig, ctx: ModuleContext, *,
                 clock: Clock = time.monotonic) -> None:
        super().__init__(name, ctx)
        self.config = config
        self.host, self.port = split_address(config.address)
        self._clock = clock
        self._routes: dict[str, dict[str, _RouteDecl]] = {}
        self._staged: dict[str, dict[str, _RouteDecl]] | None = None
        self._app: _App | None = None
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self.body_deadlines = BodyDeadlines(config.body_timeout)
        self._sweeper: asyncio.Task[None] | None = None

    def add_route(self, method: str, path: str, endpoint: Endpoint,
                  middleware: MiddlewareConfig | None = None) -> None:
        """Serve `endpoint` for `method` on `path` (`{param}` templates, as in Starlette); before start."""
        method = method.upper()
        table = self._staged if self._staged is not None else self._routes
        if self._server is not None and self._staged is None:
            raise ModuleError(f"{self._label()}: route {method} {path} added after the server started "
                              "(outside a staged route swap)")
        if not path.startswith("/"):
            raise ModuleError(f"{self._label()}: route path {path!r} must start with '/'")
        try:
            compile_path(path)
        except ValueError as exc:
            raise ModuleError(f"{self._label()}: invalid route path {path!r}: {exc}") from exc
        methods = table.setdefault(path, {})
        if method in methods:
            raise ModuleError(f"{self._label()}: route {method} {path} is already registered")
        methods[method] = _RouteDecl(endpoint, middleware)

    def stage_routes(self) -> None:
        """Begin a new route table (config apply): `add_route` fills it; the served routes stay until commit."""
        self._staged = {}

    def commit_routes(self) -> None:
        """Serve the staged routes from now on; requests in flight finish on the routes they started with."""
        if self._staged is None:
            return
        self._routes, self._staged = self._staged, None
        if self._app is not None:
            self._app.swap(self._build_app())

    def discard_routes(self) -> None:
        """Drop the staged routes (the config apply failed)."""
        self._staged = None

    async def start(self) -> None:
        """Bind, start serving in an owned task, and return once the server is listening."""
        app = self._app = self._build_app()
        sock = self._bind()
        config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, interface="asgi3",
            ws="none", server_header=False, proxy_headers=bool(self.config.forwarded_allow_ips),
            forwarded_allow_ips=self.config.forwarded_allow_ips or None,
            timeout_graceful_shutdown=math.ceil(self.config.shutdown_timeout),
        )
        server = self._server = _Uvicorn(config)
        task: asyncio.Task[None] = self.ctx.spawn(server.serve(sockets=[sock]), "serve")
        self._task = task
        ready = asyncio.ensure_future(server.ready.wait())
        try:
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not server.ready.is_set():
            sock.close()
            exc = task.exception() if task.done() and not task.cancelled() else None
            raise ModuleError(f"{self._label()}: server on {self.config.address} ended while starting: {exc}")
        self._sweeper = self.ctx.spawn(self.body_deadlines.sweep(), "body-deadlines")
        _log.info("http_server_listening", module=self.name, address=self._address())

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within `shutdown_timeout`, then cancel the rest."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        if self._sweeper is not None:  # requests still reading their body are uvicorn's to end now
            self._sweeper.cancel()
        # uvicorn itself cancels requests at its graceful timeout; the extra second covers its 0.1 s ticks.
        done, _ = await asyncio.wait({task}, timeout=math.ceil(self.config.shutdown_timeout) + 1.0)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            _log.error("http_server_failed", module=self.name, exc_info=task.exception())

    @property
    def asgi_app(self) -> ASGIApp | None:
        """The ASGI app uvicorn serves (None before start): for in-process drivers (bench/http_inprocess.py)."""
        return self._app

    def describe(self) -> dict[str, Any]:
        """The bound address (the real port when configured with port 0)."""
        return {"address": self._address()}

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        dualstack = family == socket.AF_INET6 and self.host == "::" and socket.has_dualstack_ipv6()
        try:
            sock = socket.create_server((self.host, self.port), family=family, backlog=2048,
                                        dualstack_ipv6=dualstack)
        except OSError as exc:
            raise ModuleError(
                f"{self._label()}: cannot listen on {self.config.address}: {exc.strerror or exc}"
            ) from exc
        self.port = sock.getsockname()[1]
        return sock

    def _build_app(self) -> _App:
        metrics = self.ctx.metrics
        fallbacks = _Fallbacks(self.name, metrics, self.config.middleware, self.config.access_log)
        static: dict[str, _PathApp] = {}
        routes: list[Route] = []
        for template, decls in self._routes.items():
            path_app = self._path_app(template, decls, metrics, fallbacks)
            if "{" in template:
                routes.append(Route(template, endpoint=path_app))
            else:
                static[template] = path_app
        return _App(static, Router(routes, redirect_slashes=False, default=fallbacks.not_found))

    def _path_app(self, template: str, decls: dict[str, _RouteDecl], metrics: Metrics,
                  fallbacks: _Fallbacks) -> _PathApp:
        handlers: dict[str, _Handler] = {}
        preflight: dict[str, _Handler] = {}
        endpoints: dict[str, Endpoint] = {}
        for method, decl in decls.items():
            merged = merge_middleware(self.config.middleware, decl.middleware)
            if merged.max_body_size is None:
                merged = merged.model_copy(update={"max_body_size": self.config.max_body_size})
            log = _log.bind(server=self.name, route=f"{method} {template}")
            endpoint = endpoints[method] = wrap_endpoint(decl.endpoint, merged, clock=self._clock, log=log)
            handlers[method] = self._handler(endpoint, method, template)
            if merged.cors is not None and "OPTIONS" not in decls:
                # A preflight asks about a method; answer it with that method's CORS settings.
                preflight[method] = self._handler(endpoint, "OPTIONS", template)
        if "GET" in handlers and "HEAD" not in handlers:
            handlers["HEAD"] = self._handler(endpoints["GET"], "HEAD", template)
        return _PathApp(template, handlers, preflight, fallbacks)

    def _handler(self, endpoint: Endpoint, method: str, template: str) -> _Handler:
        return _Handler(endpoint, self.ctx.metrics, (self.name, method, template), self.config.access_log)

    def _address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _label(self) -> str:
        return f"module '{self.name}' (http.server)"


SPEC = ModuleSpec(
    type="http.server",
    kind="http_server",
    config_model=HttpServerConfig,
    factory=HttpServer,
    summary="HTTP server for workflow routes: metrics per route, CORS, rate limits, auth, JSON errors.",
)
