"""Dynamic components: list, show, upload (POST creates, PUT replaces) and remove an uploaded source."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, ValidationError

from workflow_engine.api.auth import Role
from workflow_engine.api.body import parse_json, read_body
from workflow_engine.api.deps import ControlDep, errors, require
from workflow_engine.config.models import NAME_PATTERN
from workflow_engine.errors import WorkflowEngineError
from workflow_engine.modules.dynamic.service import ComponentService

router = APIRouter(tags=["dynamic components"])

MAX_SOURCE = 1024 * 1024
SOURCE_TYPES = ("text/plain", "text/x-python", "text/python", "application/x-python")
ADMIN_READ = Depends(require(Role.ADMIN, "read dynamic components"))
ADMIN_WRITE = Depends(require(Role.ADMIN, "change dynamic components"))


class ComponentView(BaseModel):
    """A dynamic component: its active version and the last refused one."""

    name: str
    isolation: str
    file: str | None = Field(description="The configured source file, if any.")
    status: str = Field(description="ready (a version is active) or empty (no source yet).")
    versions_held: int = Field(description="Versions in memory: the active one and old ones still draining.")
    last_error: dict[str, Any] | None = Field(description="The last refused version: file, line, reason, at.")
    version: int | None = Field(None, description="Number of the active version (counted since start).")
    origin: str | None = Field(None, description="file or upload.")
    digest: str | None = Field(None, description="SHA-256 of the active source.")
    loaded_at: float | None = Field(None, description="When the active version was loaded (Unix time).")
    in_flight: int | None = Field(None, description="Calls running on the active version.")
    worker_pids: list[int] | None = Field(None, description="isolation: process: the workers' process ids.")
    workers_replaced: int | None = Field(None, description="isolation: process: workers killed and replaced.")
    spare_worker_pids: list[int] | None = Field(
        None, description="isolation: process: worker processes started ahead for the next version or replacement.")


class ComponentDetail(ComponentView):
    source: str | None = Field(description="The active version's source.")


class ComponentList(BaseModel):
    items: list[ComponentView]


class NewComponent(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="A configured dynamic.component module.")
    source: str = Field(description="The Python source.")


class SourceBody(BaseModel):
    source: str = Field(description="The Python source.")


_SOURCE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The Python source: as text, or JSON `{\"source\": \"...\"}`.",
        "content": {
            "text/x-python": {"schema": {"type": "string"}},
            "application/json": {"schema": SourceBody.model_json_schema()},
        },
    }
}


def _service(control: ControlDep) -> ComponentService:
    return ComponentService(control.engine.modules)


@router.get("/dynamic/components", response_model=ComponentList, responses=errors(403),
            dependencies=[ADMIN_READ], summary="List dynamic components")
async def list_components(control: ControlDep) -> dict[str, Any]:
    """Every dynamic component: version, status, origin, when it was loaded and the last refused version."""
    return {"items": _service(control).list()}


@router.post("/dynamic/components", status_code=201, response_model=ComponentView,
             responses={**errors(400, 403, 404, 409, 408, 413)}, dependencies=[ADMIN_WRITE],
             summary="Upload the first source of a component")
async def create_component(body: NewComponent, control: ControlDep) -> dict[str, Any]:
    """Upload a source for a configured dynamic.component module that has none uploaded yet (409 otherwise: PUT
    replaces). It is checked and started beside the active version, kept in the store, then swapped in."""
    return await _service(control).create(body.name, body.source)


@router.get("/dynamic/components/{name}", response_model=ComponentDetail, responses=errors(403, 404),
            dependencies=[ADMIN_READ], summary="Show a dynamic component")
async def get_component(name: str, control: ControlDep) -> dict[str, Any]:
    """One component with its active source."""
    return _service(control).get(name)


@router.put("/dynamic/components/{name}", response_model=ComponentView,
            responses={**errors(400, 403, 404, 408, 413, 415)}, dependencies=[ADMIN_WRITE],
            openapi_extra=_SOURCE_BODY, summary="Upload a component's source (create or replace)")
async def put_component(name: str, request: Request, control: ControlDep) -> dict[str, Any]:
    """Replace the component's code without restart: the next call uses it, calls running finish on the old
    version. It wins over the configured file until DELETE. A refused source changes nothing (422)."""
    return await _service(control).replace(name, await _source(request))


@router.delete("/dynamic/components/{name}", response_model=ComponentView, responses=errors(403, 404),
               dependencies=[ADMIN_WRITE], summary="Remove a component's uploaded source")
async def delete_component(name: str, control: ControlDep) -> dict[str, Any]:
    """Drop the uploaded source: the configured file serves again (or, without one, the component has no code)."""
    return await _service(control).delete(name)


async def _source(request: Request) -> str:
    raw = await read_body(request, MAX_SOURCE)
    media_type = request.headers.get("content-type", "text/x-python").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        try:
            return SourceBody.model_validate(parse_json(raw, "the request body")).source
        except ValidationError as err:
            raise WorkflowEngineError("a JSON body must be an object with a string `source`",
                                      code="invalid_request", http_status=400) from err
    if media_type not in SOURCE_TYPES:
        raise WorkflowEngineError(f"unsupported content type '{media_type}': send text/x-python or "
                                  "application/json {\"source\": ...}", code="unsupported_media_type",
                                  http_status=415)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise WorkflowEngineError(f"the source is not UTF-8 text: {err}", code="invalid_request",
                                  http_status=400) from err
