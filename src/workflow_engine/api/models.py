"""Request and response bodies of the management API (they make its OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    """A stable error code and one sentence saying what went wrong (some errors add fields, e.g. `issues`)."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable code: unauthorized, forbidden, not_found, queue_full, ...")
    message: str = Field(description="What went wrong, naming the workflow, execution or field.")


class ErrorResponse(BaseModel):
    """Every error answer of the API."""

    error: ErrorDetail


class StatusResponse(BaseModel):
    """The engine at a glance."""

    app: str = Field(description="Application name from the config.")
    engine_version: str = Field(description="workflow-engine version.")
    config_version: int | None = Field(description="Version of the running config in the store, when recorded.")
    started_at: float = Field(description="When the management API started (Unix seconds).")
    uptime_seconds: float = Field(description="Seconds since then.")
    ready: bool = Field(description="Whether /readyz answers 200.")
    readiness: dict[str, Any] = Field(description="The /readyz body: every component and its state.")
    live_executions: int = Field(description="Executions queued or running on this replica.")


class TriggerSummary(BaseModel):
    """A workflow's trigger: its kind and the settings given in the config (secrets masked)."""

    kind: str
    config: dict[str, Any]


class StepSummary(BaseModel):
    """A step's id and kind, with its nested steps (`then`, `else`, `do`, branches...)."""

    id: str
    kind: str
    children: dict[str, list[StepSummary]] = Field(default_factory=dict, description="Nested step lists by field.")


class WorkflowSummary(BaseModel):
    """A workflow of the running config and its live executions on this replica."""

    name: str
    description: str
    trigger: TriggerSummary
    steps: list[StepSummary]
    on_error: list[StepSummary]
    concurrency: int = Field(description="Executions running at once at most, per replica.")
    queue_size: int = Field(description="Executions waiting for a slot at most before new ones are refused.")
    timeout: float | None = Field(description="Deadline of a whole execution in seconds.")
    durable: bool = Field(description="Whether every step is checkpointed.")
    running: int = Field(description="Executions running now on this replica.")
    queued: int = Field(description="Executions waiting for a slot on this replica.")


class WorkflowList(BaseModel):
    """Every workflow of the running config."""

    items: list[WorkflowSummary]


class ExecutionSummary(BaseModel):
    """One execution: identity, status, input and result."""

    id: str
    workflow: str
    status: str = Field(description="queued, running, parked, success, error or cancelled.")
    trigger: str
    attempt: int
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    parent_id: str | None = None
    idempotency_key: str | None = None
    config_version: int | None = None


class StepCheckpoint(BaseModel):
    """The recorded result of one step run."""

    step: str = Field(description="Step key: the id, with the path inside foreach/parallel when nested.")
    status: str
    attempt: int = 1
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class ExecutionDetail(ExecutionSummary):
    """An execution with its step checkpoints."""

    steps: list[StepCheckpoint]
    owner: str | None = Field(None, description="The replica running it (durable executions; null when nobody "
                              "holds it).")
    lease_expires_at: float | None = Field(None, description="When another replica may take it over unless its "
                                           "owner heartbeats (Unix seconds).")


class ExecutionPage(BaseModel):
    """A page of executions, newest first; pass `next_cursor` as `cursor` for the next page (null at the end)."""

    items: list[ExecutionSummary]
    next_cursor: str | None


class ConfigResponse(BaseModel):
    """The running config as written (environment variables unexpanded)."""

    file: str
    text: str
    version: int | None


class AppliedConfig(BaseModel):
    """A config applied without restart."""

    applied: bool
    version: int


class ConfigText(BaseModel):
    """A config to check, sent as JSON."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The YAML text of the config.")


class ConfigIssue(BaseModel):
    """One problem of a config, located in its text."""

    file: str
    line: int
    col: int
    path: str
    message: str


class ValidationResult(BaseModel):
    """Whether a config is valid, and every issue when it is not."""

    valid: bool
    issues: list[ConfigIssue] = Field(default_factory=list)


class TypeInfo(BaseModel):
    """A registered module, step or trigger type."""

    name: str = Field(description="What the config calls it: `type` of a module, step key, trigger kind.")
    kind: str | None = Field(None, description="The module family (modules only).")
    key: str | None = Field(None, description="The YAML key selecting the step (steps only).")
    summary: str
    config_schema: dict[str, Any] = Field(description="JSON Schema of its config.")


class Catalog(BaseModel):
    """Every type this engine knows."""

    modules: list[TypeInfo]
    steps: list[TypeInfo]
    triggers: list[TypeInfo]
