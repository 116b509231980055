"""The `http` trigger: a route on an `http.server` module that admits an execution per request."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from pydantic import Field, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration
from workflow_engine.errors import (
    AdmissionError,
    QueueFullError,
    StepError,
    UnknownWorkflowError,
    WorkflowEngineError,
)
from workflow_engine.modules.http.middleware import MiddlewareConfig
from workflow_engine.modules.http.server import BodyDeadlines, HttpServer
from workflow_engine.registry.specs import ModuleRef, TriggerSpec
from workflow_engine.runtime.execution import REDACTED, Execution, ExecutionStatus
from workflow_engine.runtime.jsonschema_check import SchemaCheck
from workflow_engine.runtime.runtime import Runtime
from workflow_engine.runtime.templates import Value
from workflow_engine.triggers.base import Trigger, TriggerBuilder, Wiring

JSON = "application/json"


class CacheConfig(Strict):
    ttl: Duration = Field(gt=0, description="How long a cached response is served.")
    key: str = Field("{{ input.method }} {{ input.path }}?{{ input.query_string }}",
                     description="Template of the cache key; requests with the same key share a response.")
    max_entries: int = Field(1000, ge=1, description="Responses kept; the least recently used go first.")


class HttpTriggerConfig(Strict):
    server: Annotated[str, ModuleRef(("http_server",))] = Field(description="The http.server module serving it.")
    method: str = Field("GET", pattern=r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)$", description="HTTP method.")
    path: str = Field(pattern=r"^/", description="Route path; `{name}` captures a path parameter.")
    async_: bool = Field(False, alias="async", description="Answer 202 with the execution id at once.")
    body_schema: dict[str, Any] | None = Field(None, description="JSON Schema the body must match (else 400).")
    middleware: MiddlewareConfig | None = Field(None, description="Route middleware (overrides the server's).")
    cache: CacheConfig | None = Field(None, description="Serve repeated requests from a response cache.")

    @field_validator("path")
    @classmethod
    def _route_path(cls, value: str) -> str:
        try:
            compile_path(value)  # what the server does with it: `{id}/{id}`, unknown converters...
        except (ValueError, AssertionError) as exc:
            raise ValueError(f"invalid route path: {exc}") from exc
        return value

    @field_validator("body_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := SchemaCheck.problem(value)):
            raise ValueError(problem)
        return value


class _JsonResponse(Response):
    """A JSON answer: Starlette's Response with its raw headers built here, as its `init_headers` builds them
    (the caller's headers lower-cased first, then Content-Length and Content-Type unless given), without the
    general path's per-response work."""

    media_type = JSON

    def __init__(self, body: bytes, status: int, headers: dict[str, str] | None) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else []
        has_length = has_type = False
        for key, _ in raw:
            if key == b"content-length":
                has_length = True
            elif key == b"content-type":
                has_type = True
        if not has_length and status >= 200 and status not in (204, 304):
            raw.append((b"content-length", str(len(body)).encode("latin-1")))
        if not has_type:
            raw.append(_JSON_TYPE)
        self.raw_headers = raw


_JSON_TYPE = (b"content-type", JSON.encode("latin-1"))


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson."""
    return _JsonResponse(orjson.dumps(body, default=str), status, headers)


def error_response(status: int, error: dict[str, Any], execution_id: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": error}
    hdrs = dict(headers or {})
    if execution_id:
        body["execution_id"] = execution_id
        hdrs["X-Execution-Id"] = execution_id
    return json_response(status, body, hdrs)


@dataclass(frozen=True, slots=True)
class _Cached:
    """A response as the workflow answered it, before route middleware added its headers."""

    expires: float
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def response(self) -> Response:
        """A new response object per hit: middleware appends headers (request id, security headers) to the
        response it gets, which would pile up on one shared object."""
        response = Response(self.body, self.status)
        response.raw_headers = list(self.headers)
        return response


class ResponseCache:
    """A bounded LRU of rendered responses with a time to live."""

    def __init__(self, config: CacheConfig, key: Value) -> None:
        self.ttl = config.ttl
        self.max_entries = config.max_entries
        self.key = key
        self.entries: OrderedDict[str, _Cached] = OrderedDict()

    def get(self, key: str) -> Response | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry.response()

    def put(self, key: str, response: Response) -> None:
        self.entries[key] = _Cached(time.monotonic() + self.ttl, response.status_code, bytes(response.body),
                                    tuple(response.raw_headers))
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


class HttpTrigger(Trigger):
    kind = "http"

    def __init__(self, workflow: str, config: HttpTriggerConfig, build: TriggerBuilder) -> None:
        super().__init__(workflow)
        self.config = config
        self.schema = SchemaCheck(config.body_schema) if config.body_schema is not None else None
        self.cache = (ResponseCache(config.cache, build.compile(config.cache.key, "cache.key"))
                      if config.cache else None)
        self.runtime: Runtime | None = None
        self.deadlines: BodyDeadlines | None = None

    def attach(self, wiring: Wiring) -> None:
        server = wiring.modules[self.config.server]
        assert isinstance(server, HttpServer)
        self.runtime = wiring.runtime
        self.deadlines = server.body_deadlines
        server.add_route(self.config.method, self.config.path, self.handle, self.config.middleware)

    async def handle(self, request: Request) -> Response:
        """Turn the request into an execution and its result into the response."""
        runtime, deadlines = self.runtime, self.deadlines
        assert runtime is not None
        assert deadlines is not None
        runtime.count_trigger(self.workflow, "http")
        payload = await _request_input(request, deadlines)
        if isinstance(payload, Response):
            return payload
        if self.schema is not None and (errors := self.schema.errors(payload["body"])):
            return error_response(400, {"code": "validation_failed", "message": "request body is invalid: "
                                        f"{errors[0]['path']}: {errors[0]['message']}", "details": errors})
        cache_key = None
        if self.cache is not None:
            cache_key = str(self.cache.key.render({"input": payload}))
            cached = self.cache.get(cache_key)
            if cached is not None:
                return cached
        try:
            # A synchronous request waits for the end anyway: the execution may run in this task.
            execution = await runtime.admit(self.workflow, payload, trigger="http", counted=True,
                                            idempotency_key=payload["headers"].get("idempotency-key"),
                                            inline=not self.config.async_)
        except QueueFullError as exc:
            return error_response(503, exc.to_dict(), headers={"Retry-After": str(exc.retry_after)})
        except AdmissionError as exc:
            return error_response(503, exc.to_dict(), headers={"Retry-After": "5"})
        except UnknownWorkflowError as exc:  # a request that raced a config apply removing this workflow
            return error_response(404, exc.to_dict())
        if self.config.async_:
            return json_response(202, {"execution_id": execution.id, "status": str(execution.status)},
                                 {"X-Execution-Id": execution.id, "Location": f"/api/executions/{execution.id}"})
        if runtime.get(execution.id) is not execution:  # a duplicate of an execution not running here
            return await _duplicate_response(runtime, execution)
        await execution.wait_response()
        response = execution_response(execution)
        if cache_key is not None and self.cache is not None and _shareable(response):
            self.cache.put(cache_key, response)
        return response


def _shareable(response: Response) -> bool:
    """A 2xx answer that may go to other callers: not one setting a cookie or marked private or no-store."""
    if not 200 <= response.status_code < 300:
        return False
    for name, value in response.raw_headers:
        if name == b"set-cookie" or (name == b"cache-control" and (b"private" in value or b"no-store" in value)):
            return False
    return True


async def _request_input(request: Request, deadlines: BodyDeadlines) -> dict[str, Any] | Response:
    raw = await deadlines.read(request)
    if raw is None:
        # The rest of a body may still come: the connection cannot carry another request.
        return error_response(408, {"code": "body_timeout", "message": "request body not received within "
                                    f"{deadlines.timeout:g}s"}, headers={"Connection": "close"})
    scope = request.scope
    # Read from the ASGI scope: Starlette's `url`, `headers` and `query_params` objects cost more than the
    # rest of this function. Same results: lower-case header names, the first of repeated headers, the last
    # of repeated query parameters.
    headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in reversed(scope["headers"])}
    body = _parse_body(raw, headers.get("content-type", "")) if raw else None
    if isinstance(body, Response):
        return body
    query_string = scope["query_string"].decode("latin-1")
    payload = {
        "method": scope["method"], "path": scope["path"], "params": dict(scope.get("path_params", ())),
        "query": dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {},
        "query_string": query_string, "headers": headers, "body": body,
    }
    state = scope.get("state")
    if state and "credential_header" in state:
        # The route's `auth` checked this header: an execution's input is stored and shown by the API, the
        # credential must not be. What it proved (the token's claims) is `input.auth`.
        headers[state["credential_header"]] = REDACTED
        payload["auth"] = state["auth"]
    return payload


def _parse_body(raw: bytes, content_type: str) -> Any:
    """JSON when declared (or when it looks like JSON), a mapping for form data, else text."""
    if "json" in content_type:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return error_response(400, {"code": "invalid_json", "message": f"request body is not valid JSON: {exc}"})
    if raw[:1] in (b"{", b"["):  # curl -d sends JSON as form data unless told otherwise
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    text = raw.decode("utf-8", "replace")
    if "application/x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(text, keep_blank_values=True))
    return text


async def _duplicate_response(runtime: Runtime, execution: Execution) -> Response:
    """The answer for a repeated Idempotency-Key: the first execution's answer, or 202 while it runs."""
    if not execution.finished:
        return json_response(202, {"execution_id": execution.id, "status": str(execution.status)},
                             {"X-Execution-Id": execution.id})
    execution.response = await runtime.recorder.recorded_response(execution.id)
    return execution_response(execution)


def execution_response(execution: Execution) -> Response:
    """The HTTP answer for an execution: its `respond` step, else its output or its error."""
    headers = {"X-Execution-Id": execution.id}
    if execution.response is not None:
        resp = execution.response
        headers.update(resp.headers)
        if isinstance(resp.body, str):
            return Response(resp.body, resp.status, headers, media_type=headers.get("content-type", "text/plain"))
        return json_response(resp.status, resp.body, headers)
    if execution.status is ExecutionStatus.SUCCESS:
        return json_response(200, execution.output, headers)
    error = execution.error or {"code": "internal_error", "message": "execution failed"}
    if execution.status is ExecutionStatus.CANCELLED:
        return error_response(409, error, execution.id)
    exc = execution.exception
    if isinstance(exc, StepError | WorkflowEngineError):
        status = exc.http_status
    else:  # read back from the store (a repeated Idempotency-Key): the status it answered is in the error
        status = error.get("http_status", 500)
        error = {k: v for k, v in error.items() if k != "http_status"}
    # 4xx as the workflow said; 503 (an open circuit breaker, a component without code: retry later) as it
    # is; any other failure is the engine's 500.
    ok = isinstance(status, int) and (400 <= status < 500 or status == 503)
    return error_response(status if ok else 500, error, execution.id)


def _factory(config: HttpTriggerConfig, build: TriggerBuilder) -> HttpTrigger:
    return HttpTrigger(build.workflow, config, build)


def _claims(config: HttpTriggerConfig, workflow: str) -> list[tuple[tuple[Any, ...], str, str]]:
    """One route per server, method and path shape (`/a/{id}` and `/a/{x}` match the same requests)."""
    shape = re.sub(r"\{[^}]*\}", "{}", config.path)
    return [(("http", config.server, config.method, shape), "path",
             f"route {config.method} {config.path} on server '{config.server}'")]


SPEC = TriggerSpec("http", HttpTriggerConfig, _factory,
                   "Serve a route on an http.server module; the respond step or the output is the answer.",
                   claims=_claims)
