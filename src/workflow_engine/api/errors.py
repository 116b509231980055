"""Every error of the API answers `{"error": {"code", "message", ...}}` with a 4xx (5xx only for real faults)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from workflow_engine.errors import QueueFullError, WorkflowEngineError
from workflow_engine.observability.logging import get_logger

log = get_logger("workflow_engine.api")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "too_large", 415: "unsupported_media_type",
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"error": {"code": code, "message": message, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    """Answer engine errors, request validation errors and HTTP errors as JSON error bodies."""
    app.add_exception_handler(WorkflowEngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)


async def _engine_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WorkflowEngineError)  # registered for WorkflowEngineError only
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFullError):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.http_status == 408:  # the rest of the body may still come: the connection cannot carry another request
        headers["Connection"] = "close"
    status = exc.http_status if 400 <= exc.http_status <= 599 else 500
    return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)


async def _invalid_request(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # registered for RequestValidationError only
    details = [
        {"location": ".".join(str(part) for part in err.get("loc", ())), "message": str(err.get("msg", "")),
         "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    first = details[0] if details else {"location": "request", "message": "invalid request"}
    message = f"{first['location']}: {first['message']}"
    return JSONResponse(error_body("invalid_request", message, details=details), status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    else:
        message = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 405:
        # Starlette names only the first route whose path matched; a path served by several routes (GET and
        # PUT /config) must list every method.
        headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        allowed = getattr(route, "methods", None)
        if match is not Match.NONE and allowed:
            methods |= set(allowed)
    return methods


async def _internal_error(request: Request, exc: Exception) -> Response:
    # A bug, not bad input: logged with its traceback, never shown to the client.
    log.error("management API request failed", method=request.method, path=request.url.path, error=exc)
    return JSONResponse(error_body("internal_error", f"{request.method} {request.url.path} failed"),
                        status_code=500)
