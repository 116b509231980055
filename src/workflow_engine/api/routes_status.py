"""`/status` and `/workflows`: what runs and how it is doing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from workflow_engine.api.deps import VIEWER, ControlDep, errors
from workflow_engine.api.models import StatusResponse, WorkflowList, WorkflowSummary

router = APIRouter(tags=["status"], dependencies=[VIEWER])


@router.get("/status", response_model=StatusResponse, responses=errors(), summary="Engine status")
async def get_status(control: ControlDep) -> dict[str, Any]:
    """App name, versions, uptime, readiness and live executions."""
    return control.status()


@router.get("/workflows", response_model=WorkflowList, responses=errors(), summary="List workflows")
async def list_workflows(control: ControlDep) -> dict[str, Any]:
    """Every workflow of the running config with its trigger, steps, limits and live counts."""
    return {"items": control.workflows()}


@router.get("/workflows/{name}", response_model=WorkflowSummary, responses=errors(404), summary="Show a workflow")
async def get_workflow(name: str, control: ControlDep) -> dict[str, Any]:
    """One workflow of the running config."""
    return control.workflow(name)
