"""JSON Schema checks shared by `validate` steps and HTTP `body_schema`: compiled once, all errors reported.

Valid data (the common case) is checked by code fastjsonschema generates from the schema, about 15x faster than
`jsonschema` on real schemas; the full list of violations comes from `jsonschema` (draft 2020-12). fastjsonschema
knows drafts up to 7, so a schema using a keyword of 2020-12 only is always checked by `jsonschema`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from workflow_engine.errors import ValidationFailedError

# Keywords whose meaning fastjsonschema (draft 7) does not know; with one of them, it could accept invalid data.
DRAFT_2020_ONLY = frozenset({
    "$defs", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary", "prefixItems", "unevaluatedItems",
    "unevaluatedProperties", "dependentRequired", "dependentSchemas", "minContains", "maxContains",
})


def _uses_2020_keywords(schema: Any) -> bool:
    if isinstance(schema, dict):
        return any(key in DRAFT_2020_ONLY or _uses_2020_keywords(value) for key, value in schema.items())
    if isinstance(schema, list):
        return any(_uses_2020_keywords(item) for item in schema)
    return False


def _fast_check(schema: dict[str, Any]) -> Callable[[Any], Any] | None:
    if _uses_2020_keywords(schema):
        return None
    try:
        check: Callable[[Any], Any] = fastjsonschema.compile(schema)
        return check
    except fastjsonschema.JsonSchemaDefinitionException:
        return None  # valid 2020-12 that draft 7 cannot express: jsonschema alone


class SchemaCheck:
    """A compiled JSON Schema (draft 2020-12)."""

    __slots__ = ("fast", "validator")

    def __init__(self, schema: dict[str, Any]) -> None:
        self.validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        self.fast = _fast_check(schema)

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
        if self.fast is not None:
            try:
                self.fast(data)
            except fastjsonschema.JsonSchemaValueException:
                pass
            else:
                return []
        elif self.validator.is_valid(data):
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
