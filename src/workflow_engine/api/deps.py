"""Request dependencies of the routes: the engine's `Control` and the role check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workflow_engine.api.auth import Guard, Principal, Role
from workflow_engine.api.models import ErrorResponse
from workflow_engine.engine.control import Control

bearer = HTTPBearer(
    auto_error=False,
    description="A token from engine.api.tokens (or WORKFLOW_API_TOKEN). Roles: viewer reads; operator also "
    "starts, cancels and retries executions; admin also validates and applies configs.",
)


def get_control(request: Request) -> Control:
    """The `Control` of the engine serving this request."""
    control: Control = request.app.state.control
    return control


ControlDep = Annotated[Control, Depends(get_control)]


def require(role: Role, action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets the request through when its bearer token's role is `role` or above."""

    async def authorise(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> Principal:
        guard: Guard = request.app.state.guard
        return await guard.check(credentials.credentials if credentials else None, role, action)

    return authorise


VIEWER = Depends(require(Role.VIEWER, "read"))


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route gives (401 and 422 always)."""
    return {status: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(status, "Error.")}
            for status in sorted({401, 422, *statuses})}


_DESCRIPTIONS = {
    400: "Bad request.", 401: "Missing or invalid bearer token.", 403: "The token's role does not allow this.",
    404: "Not found.", 408: "The request body did not arrive within engine.management.body_timeout.",
    409: "Conflict with the execution's status.", 413: "Body too large.",
    422: "Invalid parameters or body.", 503: "Not accepted now (queue full: see Retry-After; or shutting down).",
}
