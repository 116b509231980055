"""One exception tree for the engine; every error has a stable `code` for the API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workflow_engine.config.issues import Issue


class WorkflowEngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "engine_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class ConfigError(WorkflowEngineError):
    """The configuration has one or more issues; all of them are in `issues`."""

    code = "invalid_config"
    http_status = 400

    def __init__(self, issues: list[Issue], partial: Any = None) -> None:
        self.issues = issues
        # What did parse of the workflows despite the issues (validation hands it on so that a compile pass can
        # report template, expression and schema issues in the same run: `runtime.program.load_program`).
        self.partial = partial
        super().__init__("\n".join(str(issue) for issue in issues) or "invalid configuration")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": "invalid configuration", "issues": [i.to_dict() for i in self.issues]}


class ModuleError(WorkflowEngineError):
    """A module failed to start, stop or serve an operation."""

    code = "module_error"


class ModuleNotReadyError(ModuleError):
    """A module cannot become ready yet; the engine retries it with capped backoff."""

    code = "module_not_ready"


class StepError(WorkflowEngineError):
    """A step failed; `step` names it."""

    code = "step_failed"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        code: str | None = None,
        http_status: int | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.step = step
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.step is not None:
            out["step"] = self.step
        if self.details is not None:
            out["details"] = self.details
        return out


class StepTimeoutError(StepError):
    """A step or an operation inside it ran past its timeout."""

    code = "timeout"
    http_status = 504


class WorkflowTimeoutError(WorkflowEngineError):
    """The whole execution ran past the workflow's `timeout`."""

    code = "timeout"
    http_status = 504


class CircuitOpenError(StepError):
    """The circuit breaker is open: the call was refused without being made."""

    code = "circuit_open"
    http_status = 503


class ValidationFailedError(StepError):
    """Data failed a JSON Schema (a `validate` step or a route's `body_schema`)."""

    code = "validation_failed"
    http_status = 400
    retryable = False


class FailError(StepError):
    """A `fail` step ended the workflow on purpose (optionally with a 4xx status for HTTP callers)."""

    code = "failed"
    retryable = False


class AdmissionError(WorkflowEngineError):
    """The engine could not accept an execution."""

    code = "not_admitted"
    http_status = 503


class QueueFullError(AdmissionError):
    """The workflow's concurrency slots and queue are full; retry after `retry_after` seconds."""

    code = "queue_full"
    http_status = 503

    def __init__(self, workflow: str, retry_after: int) -> None:
        super().__init__(f"workflow '{workflow}': queue is full, retry after {retry_after}s")
        self.retry_after = retry_after


class DrainingError(AdmissionError):
    """The engine is shutting down and accepts no new executions."""

    code = "draining"


class UnknownWorkflowError(WorkflowEngineError):
    """No workflow of that name is configured."""

    code = "unknown_workflow"
    http_status = 404


class ExecutionCancelledError(WorkflowEngineError):
    """The execution was cancelled before it finished."""

    code = "cancelled"
    http_status = 409


class ComponentLoadError(WorkflowEngineError):
    """A dynamic component's source was refused (syntax, a forbidden import or name, a missing `execute`);
    `file` and `line` locate the problem. The running version, if any, keeps serving."""

    code = "component_invalid"
    http_status = 422

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "file": self.file, "line": self.line, "reason": self.reason}


class ComponentUnavailableError(StepError):
    """A `call` step named a dynamic component that has no loaded version (no source yet, or not started)."""

    code = "component_unavailable"
    http_status = 503


class BrokerError(ModuleError):
    """A broker module could not publish, consume or settle a message (the message itself is not lost)."""

    code = "broker_error"


class BrokerUnavailableError(BrokerError):
    """The broker cannot be reached now; the module reconnects with capped backoff (state `retrying`)."""

    code = "broker_unavailable"
    http_status = 503
