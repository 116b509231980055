"""The `http` step: an outbound HTTP call through an `http.client` module or the engine's default client."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import StepError
from workflow_engine.modules.http.client import HttpClient
from workflow_engine.registry.specs import ModuleRef, StepSpec
from workflow_engine.runtime.circuit_breaker import CircuitBreaker, CircuitBreakerConfig
from workflow_engine.runtime.step import Scope, Step, StepBuilder, StepContext, step_deadline
from workflow_engine.runtime.templates import header_values

# Leave the HTTP library a little time to time out on its own before the step's deadline cancels it,
# so the timeout is counted where it happened (module_operations_total{status="timeout"}).
_DEADLINE_MARGIN = 0.005


class HttpStepConfig(Strict):
    client: Annotated[str | None, ModuleRef(("http_client",))] = Field(
        None, description="An http.client module (base URL, headers, pool); default: the engine's shared client."
    )
    method: str = Field("GET", pattern=r"^[A-Za-z]+$", description="HTTP method.")
    url: str = Field(description="URL, or a path under the client's base_url (templates allowed).")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers (templates allowed).")
    query: dict[str, Any] = Field(default_factory=dict, description="Query parameters (templates allowed).")
    json_: Any = Field(None, alias="json", description="JSON request body (templates allowed).")
    body: str | None = Field(None, description="Raw request body (template allowed); use `json` for JSON.")
    timeout: Duration | None = Field(None, description="Timeout of the request; default: the client's.")
    fail_on_status: bool = Field(True, description="Fail the step on a 4xx/5xx answer.")
    circuit_breaker: CircuitBreakerConfig | None = Field(
        None, description="A breaker for this step's calls (in addition to the client's own, if any)."
    )


class HttpStep(Step):
    def __init__(self, config: HttpStepConfig, build: StepBuilder) -> None:
        self.config = config
        self.method = config.method.upper()
        self.url = build.compile(config.url, "http.url")
        self.headers = build.compile(config.headers, "http.headers")
        self.query = build.compile(config.query, "http.query")
        self.json = build.compile(config.json_, "http.json") if config.json_ is not None else None
        self.body = build.compile(config.body, "http.body") if config.body is not None else None
        self.breaker_name = build.defn.path
        self.breaker: CircuitBreaker | None = None

    async def run(self, ctx: StepContext, scope: Scope) -> Any:
        client = self._client(ctx)
        breaker = self._breaker(ctx)
        if breaker is not None:
            breaker.before_call()
        started = time.perf_counter()
        try:
            response = await client.request(
                self.method, str(self.url.render(scope)), headers=header_values(self.headers.render(scope)),
                params=self.query.render(scope), json=self.json.render(scope) if self.json else None,
                content=str(self.body.render(scope)) if self.body else None, timeout=self._timeout(),
            )
        except asyncio.CancelledError:
            deadline = step_deadline.get()
            if deadline is not None and asyncio.get_running_loop().time() >= deadline - _DEADLINE_MARGIN:
                ctx.services.metrics.module_operation(
                    "http_client", client.name, "request", "timeout", time.perf_counter() - started)
                if breaker is not None:
                    breaker.on_failure()
            raise
        except StepError:
            if breaker is not None:
                breaker.on_failure()
            raise
        if breaker is not None:
            (breaker.on_failure if response.status >= 500 else breaker.on_success)()
        if self.config.fail_on_status and response.status >= 400:
            error = StepError(f"{self.method} {self.url.render(scope)} answered {response.status}",
                              code="http_status", details={"status": response.status, "body": response.body})
            # A 4xx answer will not change on retry, except "timeout" and "too many requests".
            error.retryable = response.status >= 500 or response.status in (408, 429)
            raise error
        return {"status": response.status, "headers": response.headers, "body": response.body}

    def _client(self, ctx: StepContext) -> HttpClient:
        if self.config.client is None:
            default = ctx.services.http_default
            assert default is not None, "the engine provides a default HTTP client"
            return default
        module = ctx.services.modules[self.config.client]
        assert isinstance(module, HttpClient)
        return module

    def _breaker(self, ctx: StepContext) -> CircuitBreaker | None:
        if self.config.circuit_breaker is None:
            return None
        if self.breaker is None:
            self.breaker = CircuitBreaker(self.breaker_name, "http_client", self.config.circuit_breaker,
                                          ctx.services.metrics)
        return self.breaker

    def _timeout(self) -> float | None:
        timeout = self.config.timeout
        deadline = step_deadline.get()
        if deadline is not None:
            remaining = max(0.001, deadline - asyncio.get_running_loop().time() - _DEADLINE_MARGIN)
            timeout = remaining if timeout is None else min(timeout, remaining)
        return timeout


HTTP = StepSpec("http", HttpStepConfig, HttpStep,
                "Call an HTTP API; the output is {status, headers, body}. Retry, timeout and circuit breaker apply.")
