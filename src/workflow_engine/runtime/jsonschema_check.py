"""JSON Schema checks shared by `validate` steps and HTTP `body_schema`: compiled once, all errors reported."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from workflow_engine.errors import ValidationFailedError


class SchemaCheck:
    """A compiled JSON Schema (draft 2020-12)."""

    __slots__ = ("validator",)

    def __init__(self, schema: dict[str, Any]) -> None:
        self.validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)

    @staticmethod
    def problem(schema: Any) -> str | None:
        """Why `schema` is not a valid JSON Schema, or None."""
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            return f"invalid JSON Schema: {exc.message}"
        return None

    def errors(self, data: Any) -> list[dict[str, str]]:
        """Every violation as {path, message}; empty when `data` is valid."""
        if self.validator.is_valid(data):
            return []
        found = sorted(self.validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
        return [{"path": "/" + "/".join(map(str, e.absolute_path)), "message": e.message} for e in found]

    def check(self, data: Any, what: str) -> None:
        """Raise ValidationFailedError (HTTP 400) listing every violation."""
        errors = self.errors(data)
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ValidationFailedError(
                f"{what} is invalid: {first['path']}: {first['message']}{more}", details=errors)
