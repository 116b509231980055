"""Data steps: `set`, `transform` (JMESPath) and `validate` (JSON Schema)."""

from __future__ import annotations

from typing import Any

import jmespath
import jmespath.exceptions
from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.errors import StepError
from workflow_engine.registry.specs import StepSpec
from workflow_engine.runtime.jsonschema_check import SchemaCheck
from workflow_engine.runtime.step import Scope, StepBuilder, StepContext, SyncStep


class SetConfig(Strict):
    values: dict[str, Any] = Field(description="Names and values (templates allowed); the output is this mapping.")


class SetStep(SyncStep):
    replayable = True

    def __init__(self, config: SetConfig, build: StepBuilder) -> None:
        self.values = build.compile(config.values, "set")

    def run_sync(self, ctx: StepContext, scope: Scope) -> Any:
        return self.values.render(scope)


class TransformConfig(Strict):
    expression: str = Field(description="JMESPath expression applied to `data`.")
    data: Any = Field(
        None, description="What the expression reads (template); default: the scope (input, steps, execution)."
    )


class TransformStep(SyncStep):
    replayable = True

    def __init__(self, config: TransformConfig, build: StepBuilder) -> None:
        try:
            self.expression = jmespath.compile(config.expression)
        except jmespath.exceptions.JMESPathError as exc:
            build.issue("transform.expression", f"invalid JMESPath expression {config.expression!r}: "
                        f"{_one_line(exc)}")
        self.source = config.expression
        self.data = build.compile(config.data, "transform.data") if config.data is not None else None

    def run_sync(self, ctx: StepContext, scope: Scope) -> Any:
        data = self.data.render(scope) if self.data is not None else {
            "input": scope["input"], "steps": scope["steps"], "execution": scope["execution"]}
        try:
            return self.expression.search(data)
        except jmespath.exceptions.JMESPathError as exc:
            raise StepError(f"transform {self.source!r}: {exc}", code="transform_error") from exc


class ValidateConfig(Strict):
    schema_: dict[str, Any] = Field(alias="schema", description="JSON Schema (draft 2020-12) the data must match.")
    data: Any = Field("{{ input.body }}", description="What to validate (template); default: the request body.")


class ValidateStep(SyncStep):
    replayable = True

    def __init__(self, config: ValidateConfig, build: StepBuilder) -> None:
        problem = SchemaCheck.problem(config.schema_)
        if problem:
            build.issue("validate.schema", problem)
            self.check = SchemaCheck({})
        else:
            self.check = SchemaCheck(config.schema_)
        self.data = build.compile(config.data, "validate.data")
        self.step_id = build.defn.id

    def run_sync(self, ctx: StepContext, scope: Scope) -> Any:
        data = self.data.render(scope)
        self.check.check(data, "input")
        return data


SET = StepSpec("set", SetConfig, SetStep, "Compute named values from templates; the output is the mapping.",
               value_field="values")
TRANSFORM = StepSpec("transform", TransformConfig, TransformStep,
                     "Reshape data with a JMESPath expression.", shorthand="expression")
VALIDATE = StepSpec("validate", ValidateConfig, ValidateStep,
                    "Check data against a JSON Schema; failure is a 400 for HTTP callers.")


def _one_line(exc: Exception) -> str:
    """jmespath's parse errors print the expression and a caret on lines of their own; an issue is one line."""
    message = getattr(exc, "message", None) or getattr(exc, "msg", None) or str(exc).splitlines()[0]
    if isinstance(exc, jmespath.exceptions.IncompleteExpressionError):
        message = "incomplete expression"
    position = getattr(exc, "lex_position", None)
    return f"{message} at column {position + 1}" if isinstance(position, int) else str(message)
