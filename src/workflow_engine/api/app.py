"""The management API application and its wiring into the management server."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from workflow_engine import __version__
from workflow_engine.api import routes_config, routes_dynamic, routes_executions, routes_status, sse
from workflow_engine.api.auth import Guard
from workflow_engine.api.errors import install_error_handlers
from workflow_engine.engine.control import Control
from workflow_engine.observability.management import ManagementServer

PREFIX = "/api"
TITLE = "workflow-engine management API"
DESCRIPTION = (
    "Status, workflows, executions, config and lifecycle events of a running workflow engine. "
    "Every route needs `Authorization: Bearer <token>`; roles: viewer (read), operator (start, cancel, retry), "
    "admin (config)."
)
ROUTERS: tuple[APIRouter, ...] = (routes_status.router, routes_executions.router, routes_config.router, sse.router,
                                  routes_dynamic.router)


def build_api(control: Control, guard: Guard, routers: tuple[APIRouter, ...] = ROUTERS) -> FastAPI:
    """The FastAPI app of the management API (its routes are relative to where it is mounted)."""
    # FastAPI's own /openapi.json and /docs would answer without auth; the document is served at the
    # management server's /openapi.json instead.
    # The routes are given to the app directly rather than through `include_router`, which (FastAPI >= 0.16x)
    # wraps them in a lazy router the management server's metrics cannot see route templates through.
    routes = [route for router in routers for route in router.routes]
    api = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION, openapi_url=None, docs_url=None,
                  redoc_url=None, routes=routes)
    api.state.control = control
    api.state.guard = guard
    api.state.body_timeout = control.engine.app.engine.management.body_timeout
    install_error_handlers(api)
    return api


def openapi_document(api: FastAPI, prefix: str = PREFIX) -> dict[str, Any]:
    """The API's OpenAPI document with paths as clients call them (`/api/...` from the server root)."""
    document = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    document["paths"] = {prefix + path: item for path, item in document.get("paths", {}).items()}
    return document


def mount_api(management: ManagementServer, control: Control, environ: Mapping[str, str] | None = None) -> FastAPI:
    """Serve the API under `/api` and its OpenAPI document at `/openapi.json`; call before the server starts.

    Tokens are loaded now: a token file that cannot be read stops the engine from starting.
    """
    guard = Guard(control.api_access, os.environ if environ is None else environ)
    guard.load()
    api = build_api(control, guard)
    management.mount(PREFIX, api)
    document: dict[str, Any] = {}

    async def openapi(_request: Request) -> Response:
        # Built on first use, so routes added to `api` after mounting are in it.
        if not document:
            document.update(openapi_document(api))
        return JSONResponse(document)

    management.add_route("/openapi.json", openapi)
    return api
