"""The running config, config validation, the config JSON Schema and the registered types."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from workflow_engine.api.auth import Role
from workflow_engine.api.body import parse_json, read_body
from workflow_engine.api.deps import VIEWER, ControlDep, errors, require
from workflow_engine.api.models import (
    AppliedConfig,
    Catalog,
    ConfigResponse,
    ConfigText,
    ErrorResponse,
    ValidationResult,
)
from workflow_engine.errors import ConfigError, WorkflowEngineError

router = APIRouter(tags=["config"])

MAX_CONFIG = 2 * 1024 * 1024
YAML_TYPES = ("text/yaml", "application/yaml", "application/x-yaml", "text/x-yaml", "text/plain")

_CONFIG_BODY = {
    "requestBody": {
        "required": True,
        "description": "The config: YAML text, or JSON `{\"text\": \"...\"}`.",
        "content": {
            "text/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": ConfigText.model_json_schema()},
        },
    }
}


@router.get("/config", response_model=ConfigResponse, responses=errors(), dependencies=[VIEWER],
            summary="Show the running config")
async def get_config(control: ControlDep) -> dict[str, Any]:
    """The running config text as written (environment variables unexpanded) and its version."""
    return control.config()


@router.post(
    "/config/validate", response_model=ValidationResult,
    responses={**errors(400, 403, 408, 413, 415),
               422: {"model": ValidationResult | ErrorResponse, "description": "Invalid config (or parameters)."}},
    dependencies=[Depends(require(Role.ADMIN, "validate configs"))], openapi_extra=_CONFIG_BODY,
    summary="Validate a config",
)
async def validate_config(
    request: Request,
    control: ControlDep,
    file: Annotated[str | None, Query(max_length=255, description="File name the issues are reported in.")] = None,
) -> Any:
    """Check a config as `workflow validate` does (types, references, templates); nothing is applied."""
    text = await config_text(request)
    issues = await control.validate_config(text, file or control.config_file_name())
    if issues:
        body = {"valid": False, "issues": [issue.to_dict() for issue in issues]}
        return JSONResponse(body, status_code=422)
    return {"valid": True, "issues": []}


@router.put(
    "/config", response_model=AppliedConfig,
    responses={**errors(400, 403, 408, 413, 415),
               422: {"model": ValidationResult | ErrorResponse, "description": "Invalid config; nothing changed."}},
    dependencies=[Depends(require(Role.ADMIN, "apply configs"))], openapi_extra=_CONFIG_BODY,
    summary="Apply a config without restart",
)
async def apply_config(
    request: Request,
    control: ControlDep,
    file: Annotated[str | None, Query(max_length=255, description="File name the issues are reported in.")] = None,
) -> Any:
    """Build and validate the new config beside the running one, then swap; executions in flight finish on
    the code they started with. A bad config changes nothing and answers 422 with every issue."""
    text = await config_text(request)
    try:
        return await control.apply_config(text)
    except ConfigError as err:
        issues = [issue.to_dict() | ({"file": file} if file else {}) for issue in err.issues]
        return JSONResponse({"valid": False, "issues": issues}, status_code=422)


async def config_text(request: Request) -> str:
    """The config text of a request body: YAML as is, or the `text` of a JSON object."""
    raw = await read_body(request, MAX_CONFIG)
    media_type = request.headers.get("content-type", "text/yaml").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        try:
            return ConfigText.model_validate(parse_json(raw, "the request body")).text
        except ValidationError as err:
            raise WorkflowEngineError("a JSON body must be an object with a string `text`: the config's YAML",
                                      code="invalid_request", http_status=400) from err
    if media_type not in YAML_TYPES:
        raise WorkflowEngineError(
            f"unsupported content type '{media_type}': send text/yaml or application/json {{\"text\": ...}}",
            code="unsupported_media_type", http_status=415)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise WorkflowEngineError(f"the config is not UTF-8 text: {err}", code="invalid_request",
                                  http_status=400) from err


@router.get("/schema", response_model=dict[str, Any], responses=errors(), dependencies=[VIEWER],
            summary="Config JSON Schema")
async def get_schema(control: ControlDep) -> dict[str, Any]:
    """The JSON Schema of the config file (for editors and linters)."""
    return control.app_schema()


@router.get("/modules", response_model=Catalog, responses=errors(), dependencies=[VIEWER],
            summary="Registered types")
async def get_modules(control: ControlDep) -> dict[str, Any]:
    """The module, step and trigger types with their summaries and config schemas."""
    return control.catalog()
