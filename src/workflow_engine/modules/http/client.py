"""The `http.client` module: outbound HTTP on a pooled httpx client, with metrics, timeouts and a breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import CircuitOpenError, ModuleError, StepError, StepTimeoutError
from workflow_engine.modules.base import Module, ModuleContext
from workflow_engine.observability.metrics import Metrics
from workflow_engine.registry.specs import ModuleSpec
from workflow_engine.runtime.circuit_breaker import CircuitBreaker, CircuitBreakerConfig

KIND = "http_client"


class HttpClientConfig(Strict):
    """A pooled HTTP client for `http` steps."""

    base_url: str = Field("", description="Prefix of relative request URLs, e.g. https://api.example.com/v1.")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers sent with every request.")
    timeout: Duration = Field(10.0, description="Deadline for a whole request, unless the call sets its own.")
    connect_timeout: Duration = Field(5.0, description="Deadline for opening a connection.")
    max_connections: int = Field(100, ge=1, description="Open connections at most.")
    max_keepalive: int = Field(20, ge=0, description="Idle connections kept for reuse.")
    keepalive_expiry: Duration = Field(
        2.0, gt=0, description="Idle connections are closed after this; keep it below the servers' keep-alive "
        "timeout (5 s for uvicorn and many others), or a request may meet a connection the server is closing.",
    )
    circuit_breaker: CircuitBreakerConfig | None = Field(
        None, description="Refuse calls fast after repeated 5xx answers, timeouts or connection errors."
    )
    verify_tls: bool = Field(True, description="Verify server certificates.")
    follow_redirects: bool = Field(False, description="Follow 3xx redirects.")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An HTTP answer: `body` is parsed JSON for JSON content types, else text."""

    status: int
    headers: dict[str, str]
    body: Any
    elapsed: float


def _no_spawn(coro: Any, name: str) -> Any:
    coro.close()
    raise ModuleError(f"a standalone HTTP client runs no background tasks (asked for '{name}')")


class HttpClient(Module):
    """Makes HTTP requests; counts each in `module_operations_total{module="http_client"}`."""

    kind = KIND

    def __init__(self, name: str, config: HttpClientConfig, ctx: ModuleContext, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, ctx)
        self.config = config
        self._metrics = ctx.metrics
        self._client: httpx.AsyncClient | None = None
        self.breaker = (
            CircuitBreaker(name, KIND, config.circuit_breaker, ctx.metrics, clock=clock)
            if config.circuit_breaker is not None else None
        )

    @classmethod
    def standalone(cls, name: str, config: HttpClientConfig, metrics: Metrics) -> HttpClient:
        """A client outside the module graph (for `http` steps with absolute URLs); call `start()` first."""
        return cls(name, config, ModuleContext(name=name, metrics=metrics, modules={}, spawn_task=_no_spawn))

    async def start(self) -> None:
        """Open the connection pool."""
        cfg = self.config
        self._client = httpx.AsyncClient(
            base_url=cfg.base_url,
            headers=cfg.headers,
            timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.connect_timeout, cfg.timeout)),
            limits=httpx.Limits(
                max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_keepalive,
                keepalive_expiry=cfg.keepalive_expiry
            ),
            verify=cfg.verify_tls,
            follow_redirects=cfg.follow_redirects,
        )

    async def stop(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> dict[str, Any]:
        """Base URL and circuit breaker state."""
        out: dict[str, Any] = {"base_url": self.config.base_url}
        if self.breaker is not None:
            out["circuit_breaker"] = self.breaker.describe()
        return out

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        # A parameter rather than asyncio.timeout around the call: httpx needs it to bound each phase and the
        # breaker and metrics need to tell a timeout apart from a cancellation.
        timeout: float | None = None,  # noqa: ASYNC109
        operation: str = "request",
    ) -> HttpResponse:
        """Send a request; 4xx/5xx answers are returned, timeouts and transport errors raise step errors."""
        deadline = timeout if timeout is not None else self.config.timeout
        request = self._build(method, url, headers=headers, params=params, json=json, content=content,
                              timeout=deadline)
        if self.breaker is not None:
            try:
                self.breaker.before_call()
            except CircuitOpenError:
                self._metrics.module_operation(KIND, self.name, operation, "error", 0.0)
                raise
        return await self._send(request, deadline, operation)

    def _build(self, method: str, url: str, *, headers: Mapping[str, str] | None,
               params: Mapping[str, Any] | None, json: Any, content: bytes | str | None,
               timeout: float) -> httpx.Request:
        if self._client is None:
            raise ModuleError(f"{self._label()}: client is not started")
        if json is not None:
            try:
                content = orjson.dumps(json)
            except TypeError as exc:
                raise StepError(f"{self._label()}: request body is not JSON-serialisable: {exc}",
                                code="invalid_body") from exc
            headers = {"content-type": "application/json", **(headers or {})}
        try:
            # httpx replaces a URL's own query with `params`: keep it, and let `params` add or override keys.
            query = httpx.URL(url).params.merge(params) if params else None
            return self._client.build_request(
                method, url, headers=headers, params=query, content=content,
                timeout=httpx.Timeout(timeout, connect=min(timeout, self.config.connect_timeout)),
            )
        except httpx.InvalidURL as exc:
            raise StepError(f"{self._label()}: invalid URL {url!r}: {exc}", code="http_error") from exc

    async def _send(self, request: httpx.Request, deadline: float, operation: str) -> HttpResponse:
        assert self._client is not None
        target = f"{request.method} {request.url.copy_with(query=None, username=None, password=None)}"
        start = time.perf_counter()
        try:
            # httpx timeouts bound each phase; this bounds the whole request.
            async with asyncio.timeout(deadline):
                response = await self._client.send(request)
        except (httpx.TimeoutException, TimeoutError) as exc:
            self._done(operation, "timeout", start, ok=False)
            raise StepTimeoutError(f"{self._label()}: {target} timed out after {deadline:g}s") from exc
        except httpx.HTTPError as exc:
            self._done(operation, "error", start, ok=False)
            raise StepError(f"{self._label()}: {target} failed: {type(exc).__name__}: {exc}",
                            code="http_error") from exc
        except asyncio.CancelledError:
            if self.breaker is not None:
                self.breaker.on_cancelled()
            raise
        except Exception:
            self._done(operation, "error", start, ok=False)
            raise
        elapsed = self._done(operation, "error" if response.status_code >= 500 else "success", start,
                             ok=response.status_code < 500)
        return HttpResponse(response.status_code, dict(response.headers.items()), _body(response), elapsed)

    def _done(self, operation: str, status: str, start: float, *, ok: bool) -> float:
        elapsed = time.perf_counter() - start
        self._metrics.module_operation(KIND, self.name, operation, status, elapsed)
        if self.breaker is not None:
            if ok:
                self.breaker.on_success()
            else:
                self.breaker.on_failure()
        return elapsed

    def _label(self) -> str:
        return f"module '{self.name}' (http.client)"


def _body(response: httpx.Response) -> Any:
    content_type = response.headers.get("content-type", "")
    if "json" in content_type:
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return response.text
    return response.text


SPEC = ModuleSpec(
    type="http.client",
    kind=KIND,
    config_model=HttpClientConfig,
    factory=HttpClient,
    summary="Outbound HTTP client: connection pooling, timeouts, metrics and an optional circuit breaker.",
)
