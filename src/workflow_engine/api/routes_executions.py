"""Executions: start one by hand, list, show with steps, cancel, retry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from workflow_engine.api.auth import Role
from workflow_engine.api.body import parse_json, read_body
from workflow_engine.api.deps import VIEWER, ControlDep, errors, require
from workflow_engine.api.models import ExecutionDetail, ExecutionPage, ExecutionSummary
from workflow_engine.config.models import NAME_PATTERN
from workflow_engine.store.records import Status

router = APIRouter(tags=["executions"])

MAX_INPUT = 10 * 1024 * 1024
MAX_WAIT = 3600.0
PAGE_MAX = 500

_INPUT_BODY = {
    "requestBody": {
        "required": False,
        "description": "The execution's input: any JSON value (an empty body is null).",
        "content": {"application/json": {"schema": {}}},
    }
}


@router.post(
    "/workflows/{name}/executions", status_code=202, response_model=ExecutionSummary,
    responses={200: {"model": ExecutionSummary, "description": "Finished (with `wait=true`)."},
               **errors(400, 403, 404, 408, 413, 503)},
    dependencies=[Depends(require(Role.OPERATOR, "start executions"))],
    openapi_extra=_INPUT_BODY, summary="Start an execution",
)
async def start_execution(
    *,
    name: str,
    request: Request,
    response: Response,
    control: ControlDep,
    wait: Annotated[bool, Query(description="Wait for the result (200) instead of answering 202 at once.")] = False,
    wait_timeout: Annotated[float, Query(
        alias="timeout", gt=0, le=MAX_WAIT,
        description="Seconds to wait with `wait=true`; an execution still running then is answered 202.")] = 30.0,
    idempotency_key: Annotated[str | None, Header(
        min_length=1, max_length=255, description="A repeated key returns the execution it started first.")] = None,
) -> dict[str, Any]:
    """Start workflow `name` with the body as its input (the `manual` trigger)."""
    data = parse_json(await read_body(request, MAX_INPUT), "the execution input")
    summary, finished = await control.start(name, data, idempotency_key=idempotency_key,
                                            wait=wait_timeout if wait else None)
    response.status_code = 200 if finished and wait else 202
    response.headers["Location"] = f"{request.scope.get('root_path', '')}/executions/{summary['id']}"
    return summary


@router.get("/executions", response_model=ExecutionPage, responses=errors(400), dependencies=[VIEWER],
            summary="List executions")
async def list_executions(
    control: ControlDep,
    workflow: Annotated[str | None, Query(pattern=NAME_PATTERN, description="Only this workflow type.")] = None,
    status: Annotated[Status | None, Query(description="Only executions in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Executions per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=1024, description="`next_cursor` of the previous page.")] = None,
) -> dict[str, Any]:
    """Executions newest first, a page at a time."""
    return await control.executions(workflow=workflow, status=status, limit=limit, cursor=cursor)


@router.get("/executions/{execution_id}", response_model=ExecutionDetail, responses=errors(404),
            dependencies=[VIEWER], summary="Show an execution")
async def get_execution(execution_id: str, control: ControlDep) -> dict[str, Any]:
    """One execution with its step checkpoints."""
    return await control.execution(execution_id)


@router.post("/executions/{execution_id}/cancel", response_model=ExecutionSummary, responses=errors(403, 404),
             dependencies=[Depends(require(Role.OPERATOR, "cancel executions"))], summary="Cancel an execution")
async def cancel_execution(execution_id: str, control: ControlDep) -> dict[str, Any]:
    """Cancel a queued, running or parked execution; a finished one is answered as it is."""
    return await control.cancel(execution_id)


@router.post("/executions/{execution_id}/retry", status_code=202, response_model=ExecutionSummary,
             responses=errors(403, 404, 409), dependencies=[Depends(require(Role.OPERATOR, "retry executions"))],
             summary="Retry an execution")
async def retry_execution(execution_id: str, control: ControlDep) -> dict[str, Any]:
    """Run a failed or cancelled execution again from its failed step (completed steps are not re-run)."""
    return await control.retry(execution_id)
