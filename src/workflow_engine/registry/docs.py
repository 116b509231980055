"""Plain-text reference of the module, step and trigger types, generated from their specs."""

from __future__ import annotations

import json
import textwrap
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from workflow_engine.config.models import StepCommon
from workflow_engine.config.references import field_markers, holds_step_mapping, nested_step_fields
from workflow_engine.durations import ByteSize, Duration, format_duration
from workflow_engine.registry.specs import ModuleRef, NestedSteps, Registry, StepSpec, WorkflowRef

# Duration and ByteSize reach FieldInfo as a plain float/int plus their validators; these identify them.
_DURATION = typing.get_args(Duration)[1:]
_SIZE = typing.get_args(ByteSize)[1:]
_SCALARS: dict[Any, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Any: "any",
}
_INDENT = "    "


def describe_modules(registry: Registry) -> str:
    """Every module type: name, kind, summary and each config field with type, default and description."""
    blocks = [
        _block(f"{spec.type}  (kind: {spec.kind})", [spec.summary], spec.config_model)
        for spec in sorted(registry.modules.values(), key=lambda s: s.type)
    ]
    return _document("Module types", "Declared under `modules:` with `type:` and `config:`.", blocks)


def describe_steps(registry: Registry) -> str:
    """Every step type: its key, forms, summary and config fields, after the fields all steps share."""
    common = "Every step also takes:\n" + "\n".join(_fields(StepCommon, 1))
    blocks = [_step_block(spec) for spec in sorted(registry.steps.values(), key=lambda s: s.name)]
    return _document("Step types", common, blocks)


def describe_triggers(registry: Registry) -> str:
    """Every trigger type: name, summary and config fields."""
    blocks = [
        _block(spec.name, [spec.summary], spec.config_model)
        for spec in sorted(registry.triggers.values(), key=lambda s: s.name)
    ]
    intro = "Declared as `trigger: {<type>: <config>}`; every workflow can also be started manually."
    return _document("Trigger types", intro, blocks)


def _document(title: str, intro: str, blocks: Iterable[str]) -> str:
    return "\n\n".join([f"{title}\n{'=' * len(title)}", intro, *blocks]) + "\n"


def _block(header: str, lines: list[str], model: type[BaseModel]) -> str:
    fields = _fields(model, 1)
    body = [_INDENT + line for line in lines if line]
    return "\n".join([header, *body, *(["", *fields] if fields else [])])


def _step_block(spec: StepSpec) -> str:
    key = spec.yaml_key
    header = spec.name if key == spec.name else f"{spec.name}  (key: {key})"
    lines = [spec.summary]
    if spec.value_field:
        lines.append(f"Written `{key}: <{spec.value_field}>`.")
    elif spec.shorthand:
        lines.append(f"Short form: `{key}: <{spec.shorthand}>`.")
    if spec.siblings:
        lines.append(f"Beside `{key}` in the step: {', '.join(spec.siblings)}.")
    nested = [key for _, key in nested_step_fields(spec.config_model)]
    if nested:
        lines.append(f"Nested steps in: {', '.join(nested)}.")
    return _block(header, lines, spec.config_model)


def _fields(model: type[BaseModel], depth: int, seen: frozenset[type[BaseModel]] = frozenset()) -> list[str]:
    """One entry per field: `name: type = default` and its description; nested models indented below."""
    lines: list[str] = []
    markers = field_markers(model)
    for name, info in model.model_fields.items():
        type_name = _marked_type(markers[name], info.annotation) or _type_name(info.annotation, info.metadata)
        lines.append(f"{_INDENT * depth}{info.alias or name}: {type_name}{_default(info)}")
        if info.description:
            wrapped = textwrap.wrap(info.description, 100 - len(_INDENT) * (depth + 1))
            lines += [_INDENT * (depth + 1) + line for line in wrapped]
        for nested in _nested_models(info.annotation):
            if nested not in seen and nested is not model:
                lines += _fields(nested, depth + 1, seen | {model})
    return lines


def _marked_type(markers: Iterable[object], annotation: Any) -> str | None:
    for marker in markers:
        if isinstance(marker, ModuleRef):
            return f"module name ({', '.join(marker.kinds)})" if marker.kinds else "module name"
        if isinstance(marker, WorkflowRef):
            return "workflow name"
        if isinstance(marker, NestedSteps):
            return "mapping of steps" if holds_step_mapping(annotation) else "steps"
    return None


def _type_name(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    metadata = list(metadata)
    if any(m is d for m in metadata for d in _DURATION):
        return "duration"
    if any(m is s for m in metadata for s in _SIZE):
        return "size"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], args[1:])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[-1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    return str(getattr(annotation, "__name__", annotation))


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _nested_models(arg)]


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "  (required)"
    value = info.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        return ""  # its own fields, listed below, show their defaults
    if isinstance(value, float) and any(m is d for m in info.metadata for d in _DURATION):
        return f" = {format_duration(value)}"
    return f" = {json.dumps(value, default=str)}"


def reference_markdown(registry: Registry) -> str:
    """The whole type reference as one Markdown page (docs/reference.md)."""
    parts = [describe_modules(registry), describe_triggers(registry), describe_steps(registry)]
    body = "\n".join(f"```text\n{part.rstrip()}\n```\n" for part in parts)
    return ("# Type reference\n\nGenerated from the registry by `make docs` "
            "(the same text as `workflow modules` and `workflow steps`); do not edit by hand.\n\n" + body)
