"""Rows of the store as plain values."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    """Execution status in the store. `parked` = waiting in `sleep`/`wait_for`, holding no task."""

    QUEUED = "queued"
    RUNNING = "running"
    PARKED = "parked"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"


FINISHED = frozenset({Status.SUCCESS, Status.ERROR, Status.CANCELLED})


@dataclass
class ExecutionRecord:
    """One execution. Times are Unix seconds (float)."""

    id: str
    workflow: str
    trigger: str
    input: Any
    status: Status = Status.QUEUED
    config_version: int | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    attempt: int = 1
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    owner: str | None = None
    lease_expires_at: float | None = None
    idempotency_key: str | None = None
    parent_id: str | None = None
    wake_at: float | None = None
    wait_topic: str | None = None
    wait_state: dict[str, Any] | None = None
    durable: bool = True


@dataclass
class StepRecord:
    """The checkpoint of one step run (`step_key` is unique within the execution: `id`, or `lines[2].price`)."""

    execution_id: str
    step_key: str
    status: str
    attempt: int = 1
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """A page of executions and the cursor of the next one (None at the end)."""

    items: list[ExecutionRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ComponentSource:
    """A dynamic component's source uploaded through the API (it overrides the configured file until deleted)."""

    name: str
    source: str
    digest: str
    updated_at: float
